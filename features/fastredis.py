"""A minimal auto-pipelining Redis client for the store's hot path: EVALSHA of its read and write scripts.

Why by hand: on the recommendation path the store makes one script call per request, and redis-py's asyncio client
spent ~180 us of CPU on each (connection pool, retry wrapper, per-call parser setup) against ~60 us here (measured
side by side on the same calls, see docs/benchmarks.md). The protocol is small: RESP commands out, hiredis parses the
replies, and replies come back in the order commands were sent.

One connection per client and event loop; every concurrent call writes its command into a buffer that is flushed
once per loop iteration (so 32 concurrent requests cost one `send`), and queues a future that the matching reply
resolves. A caller that gives up (timeout, cancellation) leaves its future in the queue; the reply, when it comes, is
dropped. A lost connection fails every pending call with ConnectionError; the next call reconnects. Errors are
redis-py's exception classes, so callers handle both clients alike. Plain TCP only (the store uses redis-py for
TLS and Unix sockets).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.buffer: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step, start over
                self._fail(RedisConnectionError("redis: unexpected reply; connection reset"))
                if self.transport is not None:
                    self.transport.close()
                return
            fut = pending.popleft()
            if fut.done():  # the caller gave up (timeout); its reply is dropped
                continue
            if isinstance(reply, ResponseError):
                msg = str(reply)
                fut.set_exception(NoScriptError(msg) if msg.startswith("NOSCRIPT") else reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"redis: connection lost ({exc or 'closed by server'})"))

    def _fail(self, exc: Exception) -> None:
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.pending.append(fut)
        self.buffer.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.buffer and self.transport is not None and not self.closed:
            data = b"".join(self.buffer)
            self.buffer.clear()
            self.transport.write(data)


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bool):
            raise TypeError("redis arguments: bool is ambiguous; pass 0/1 or a string")
        elif isinstance(a, (int, float)):
            b = repr(a).encode()
        else:
            raise TypeError(f"redis arguments: unsupported type {type(a).__name__}")
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    return b"".join(parts)


class FastRedis:
    """`await client.call("EVALSHA", sha, 0, ...)`; one auto-pipelined connection, reconnected on demand."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None, connect_timeout_s: float = 2.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def from_url(cls, url: str) -> "FastRedis | None":
        """A client for a plain `redis://` URL, or None for anything this client does not speak (TLS, sockets)."""
        u = urlparse(url)
        if u.scheme != "redis" or not u.hostname:
            return None
        path = u.path.lstrip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            return None
        return cls(u.hostname, u.port or 6379, db, unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(_Protocol, self.host, self.port)
                setup: list[asyncio.Future[Any]] = []
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    setup.append(proto.send(pack(auth)))
                if self.db:
                    setup.append(proto.send(pack(("SELECT", self.db))))
                for fut in setup:
                    await fut
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"redis: cannot connect to {self.host}:{self.port}: {exc}") from exc
        return proto

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed and proto._loop is asyncio.get_running_loop():
            return proto
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            proto = await asyncio.shield(self._connecting)
        finally:
            c = self._connecting
            if c is not None and c.done() and (c.cancelled() or c.exception() is not None):
                self._connecting = None
        self._proto = proto
        return proto

    async def call(self, *args: Any) -> Any:
        proto = await self._connection()
        return await proto.send(pack(args))

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
