"""Where content items live: a small port and two adapters, Redis (built from a RedisFeatureStore) and in-process.

Redis layout (P = the store prefix; keys written down here and in docs/feature-store.md):

| key              | type   | holds                                                   | bound                |
|------------------|--------|---------------------------------------------------------|----------------------|
| P:ct:{content}   | hash   | `j`: the Content item (msgpack)                          | none (catalog)       |
| P:ct:index       | set    | every content id                                        | the catalog          |
| P:ct:version     | string | counter, INCR'd by every upsert (cache invalidation)    | one key              |

Readers cache the whole catalog in process and reload it only when `version()` changed, so serving costs no read.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from features.content import Content, decode_stored_content, encode_content
from features.memory_store import MemoryFeatureStore
from features.redis_store import WRITE_TIMEOUT_S, RedisFeatureStore
from features.store import FeatureStore, StoreUnavailable

T = TypeVar("T")
LOAD_TIMEOUT_S = 1.0  # reading the whole catalog: longer than a profile read, far shorter than a bulk write


class ContentKeys:
    """Key builder for one prefix; content ids sit in braces (a hash tag), so they never collide with `index`."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def item(self, content_id: str) -> str:
        return f"{self.prefix}:ct:{{{content_id}}}"

    @property
    def index(self) -> str:
        return f"{self.prefix}:ct:index"

    @property
    def version(self) -> str:
        return f"{self.prefix}:ct:version"


class ContentCatalog(Protocol):
    """The port. `load()` returns the version it read first, so a concurrent upsert makes the next check reload."""

    async def upsert(self, items: Sequence[Content]) -> int: ...

    async def get(self, content_id: str) -> Content | None: ...

    async def version(self) -> int: ...

    async def load(self) -> tuple[int, list[Content]]: ...


class RedisContentCatalog:
    """Upsert is one pipelined round trip (items, index, then the version bump last); `load` is two."""

    def __init__(self, client: aioredis.Redis, prefix: str, timeout_s: float | None = None) -> None:
        self.client = client
        self.keys = ContentKeys(prefix)
        self.timeout_s = timeout_s
        self._write_timeout = max(timeout_s or 0.0, WRITE_TIMEOUT_S)
        self._load_timeout = max(timeout_s or 0.0, LOAD_TIMEOUT_S)

    @classmethod
    def for_store(cls, store: RedisFeatureStore) -> "RedisContentCatalog":
        return cls(store.client, store.keys.prefix, store.timeout_s)

    async def _call(self, aw: Awaitable[T], timeout: float | None) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def upsert(self, items: Sequence[Content]) -> int:
        if not items:
            return 0
        # transaction=False like every other multi-key write of the store (cross-slot on a cluster); the server runs
        # the pipeline in order, so a reader that sees the new version also sees the new items.
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hset(self.keys.item(item.content_id), "j", encode_content(item))
        pipe.sadd(self.keys.index, *[i.content_id for i in items])
        pipe.incr(self.keys.version)
        await self._call(pipe.execute(), self._write_timeout)
        return len(items)

    async def get(self, content_id: str) -> Content | None:
        blob = await self._call(self.client.hget(self.keys.item(content_id), "j"), self.timeout_s)
        return decode_stored_content(blob) if isinstance(blob, bytes) else None

    async def version(self) -> int:
        return int(await self._call(self.client.get(self.keys.version), self.timeout_s) or 0)

    async def load(self) -> tuple[int, list[Content]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.version)
        pipe.smembers(self.keys.index)
        version, ids = await self._call(pipe.execute(), self._load_timeout)
        ordered = sorted(i.decode() if isinstance(i, bytes) else i for i in ids)
        if not ordered:
            return int(version or 0), []
        pipe = self.client.pipeline(transaction=False)
        for content_id in ordered:
            pipe.hget(self.keys.item(content_id), "j")
        blobs = await self._call(pipe.execute(), self._load_timeout)
        return int(version or 0), [decode_stored_content(b) for b in blobs if b]


class MemoryContentCatalog:
    """The in-process twin: same semantics, one per MemoryFeatureStore object (see `catalog_for`)."""

    def __init__(self) -> None:
        self.items: dict[str, Content] = {}
        self._version = 0

    async def upsert(self, items: Sequence[Content]) -> int:
        if not items:
            return 0
        for item in items:
            self.items[item.content_id] = item
        self._version += 1
        return len(items)

    async def get(self, content_id: str) -> Content | None:
        return self.items.get(content_id)

    async def version(self) -> int:
        return self._version

    async def load(self) -> tuple[int, list[Content]]:
        return self._version, [self.items[k] for k in sorted(self.items)]


_memory_catalogs: "weakref.WeakKeyDictionary[MemoryFeatureStore, MemoryContentCatalog]" = weakref.WeakKeyDictionary()


def catalog_for(store: FeatureStore) -> ContentCatalog:
    """The content catalog that lives beside a feature store: in the same Redis under the same prefix, or, for the
    embedded store, one in-process catalog per store object (shared by every app that uses that store)."""
    if isinstance(store, RedisFeatureStore):
        return RedisContentCatalog.for_store(store)
    if isinstance(store, MemoryFeatureStore):
        found = _memory_catalogs.get(store)
        if found is None:
            found = _memory_catalogs[store] = MemoryContentCatalog()
        return found
    raise TypeError(f"no content catalog adapter for a {type(store).__name__} feature store")
