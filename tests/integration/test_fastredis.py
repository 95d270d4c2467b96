"""The hot-path Redis client against a real server: ordering under concurrency, errors, abandoned calls, reconnects."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from features.fastredis import FastRedis, pack


def client(url: str) -> FastRedis:
    c = FastRedis.from_url(url)
    assert c is not None
    return c


async def test_concurrent_calls_get_their_own_replies_in_order(redis_url: str, redis_prefix: str) -> None:
    c = client(redis_url)
    keys = [f"{redis_prefix}:k{i}" for i in range(300)]
    await asyncio.gather(*[c.call("SET", k, f"v{i}") for i, k in enumerate(keys)])
    got = await asyncio.gather(*[c.call("GET", k) for k in keys])
    assert got == [f"v{i}".encode() for i in range(300)]
    assert await c.call("INCRBY", f"{redis_prefix}:n", 5) == 5
    assert await c.call("PING") == b"PONG"
    await c.close()


async def test_error_replies_raise_redis_py_exceptions(redis_url: str, redis_prefix: str) -> None:
    c = client(redis_url)
    await c.call("SET", f"{redis_prefix}:s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await c.call("LPUSH", f"{redis_prefix}:s", "x")
    with pytest.raises(NoScriptError):
        await c.call("EVALSHA", "0" * 40, 0)
    assert await c.call("GET", f"{redis_prefix}:s") == b"text"  # the connection is still in step
    await c.close()


async def test_an_abandoned_call_does_not_shift_later_replies(redis_url: str, redis_prefix: str) -> None:
    c = client(redis_url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await c.call("BLPOP", f"{redis_prefix}:empty", "0.3")  # blocks the connection for 300 ms
    await c.call("SET", f"{redis_prefix}:after", "1")
    assert await c.call("GET", f"{redis_prefix}:after") == b"1"
    await c.close()


async def test_a_killed_connection_fails_pending_calls_and_reconnects(redis_url: str, redis_prefix: str) -> None:
    c = client(redis_url)
    my_id = await c.call("CLIENT", "ID")
    blocked = asyncio.ensure_future(c.call("BLPOP", f"{redis_prefix}:empty", "2"))
    await asyncio.sleep(0.05)
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "KILL", "ID", my_id)  # only this client's connection
    admin.close()
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await c.call("PING") == b"PONG"  # reconnected on demand
    await c.close()


async def test_urls_and_packing() -> None:
    assert FastRedis.from_url("rediss://h:6380/0") is None  # TLS: the store keeps redis-py
    assert FastRedis.from_url("unix:///tmp/redis.sock") is None
    c = FastRedis.from_url("redis://user:p%40ss@db.example:6390/3")
    assert c is not None and (c.host, c.port, c.db, c.username, c.password) == ("db.example", 6390, 3, "user", "p@ss")
    assert pack(("SET", "k", b"\x00v", 2, 1.5)) == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n2\r\n$3\r\n1.5\r\n"
    with pytest.raises(TypeError):
        pack(("SET", "k", True))
    nowhere = FastRedis("127.0.0.1", 1, connect_timeout_s=0.5)
    with pytest.raises(RedisConnectionError):
        await nowhere.call("PING")
