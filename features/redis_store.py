"""The Redis adapter of the FeatureStore port: one Lua call per ingested batch, one pipeline per profile read.

Owns the client and its sized connection pool; `close()` releases it (the service's lifespan calls it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from features import keys as K
from features.keys import Keys
from features.schema import (
    Event,
    IngestResult,
    Item,
    Profile,
    RecentEvent,
    Session,
    decode_link_record,
    decode_log_record,
    encode_log_record,
    event_identifiers,
    normalize,
    session_items,
    to_log_record,
)
from features.store import LogEntry, StoreUnavailable, Window

T = TypeVar("T")

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_recent_decoder = msgspec.json.Decoder(RecentEvent)
_item_decoder = msgspec.msgpack.Decoder(Item)

# The numbers the Lua script needs, all from features/keys.py.
LUA_CONFIG: dict[str, Any] = (
    {
        "decay_epoch": K.DECAY_EPOCH,
        "person_ttl": K.PERSON_TTL,
        "cart_ttl": K.CART_TTL,
        "session_ttl": K.SESSION_TTL,
        "item_stats_ttl": K.ITEM_STATS_TTL,
        "dedupe_ttl": K.DEDUPE_TTL,
        "trending_keep": K.TRENDING_KEEP,
        "recent_cap": K.RECENT_CAP,
        "item_aff_cap": K.ITEM_AFF_CAP,
        "cat_aff_cap": K.CAT_AFF_CAP,
        "purchased_cap": K.PURCHASED_CAP,
        "returned_cap": K.RETURNED_CAP,
        "popular_cap": K.POPULAR_CAP,
        "affinity_half_life": K.AFFINITY_HALF_LIFE,
        "popular_half_life": K.POPULAR_HALF_LIFE,
        "affinity": K.AFFINITY_WEIGHTS,
        "popularity": K.POPULARITY_WEIGHTS,
    }
)


def _lua_literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua_literal(v)}" for k, v in value.items()) + "}"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


# Compiled once by SCRIPT LOAD: per call, the config is a table constructor, not a JSON decode.
_LUA = (
    resources.files("features")
    .joinpath("lua/ingest.lua")
    .read_text(encoding="utf-8")
    .replace("__CONFIG__", _lua_literal(LUA_CONFIG))
)

PROFILE_RECENT = 50
PROFILE_AFFINITIES = 50
PROFILE_CATEGORIES = 20
# Writes and log reads may legitimately take longer than a profile read (a 1,000-event batch is one script call),
# so they run under max(timeout_s, WRITE_TIMEOUT_S); reads use timeout_s.
WRITE_TIMEOUT_S = 10.0
GROUP_COMMIT_MAX = 10  # concurrent requests this small share one script call; larger batches go alone
TRAITS_CHUNK = 1000
PERSON_PARTS = ("p", "r", "ia", "ca", "b", "rt", "cart", "s", "ids")


def lua_event(event: Event, now: float) -> tuple[list[Any], bytes, bytes]:
    """The compact array the Lua script reads (see the header of lua/ingest.lua; "" and 0 stand for absent),
    the event's recent-list entry (JSON) and its offline-log record (msgpack, person_id left "" for the script)."""
    ctx = event.context
    recent = RecentEvent(
        type=event.type,
        channel=event.channel,
        ts=event.ts,
        item_id=event.item_id,
        offer_id=event.offer_id,
        content_id=event.content_id,
        decision_id=event.decision_id,
    )
    log = encode_log_record(to_log_record(event, "", now))
    head = [
        event.event_id,
        event_identifiers(event),
        event.customer_id or "",
        event.type,
        event.channel,
        event.ts,
        event.item_id or "",
        event.quantity or 0,
        event.value or 0.0,
        (ctx.country if ctx else None) or "",
        (ctx.session_id if ctx else None) or "",
        person_offset(log, event.event_id),  # type: ignore[arg-type]
    ]
    return head, _json.encode(recent), log


def person_offset(log: bytes, event_id: str) -> int:
    """Where person_id (encoded "", one byte) sits in a LogRecord's msgpack array: after the header and event_id."""
    header = 1 if log[0] >> 4 == 0x9 else 3  # fixarray, else array16 (a LogRecord has at most 22 fields)
    offset = header + len(_msgpack.encode(event_id))
    if log[offset] != 0xA0:
        raise ValueError(f"person_id: not found at byte {offset} of the encoded log record")
    return offset


def _s(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


class RedisFeatureStore:
    """FeatureStore on redis.asyncio. `timeout_s` bounds each read (None: no bound); any failure or overrun raises
    StoreUnavailable. A write that timed out may still have been applied: retrying it is safe (event_id dedupe)."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str = K.DEFAULT_PREFIX, timeout_s: float | None = None) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive or None, got {timeout_s}")
        self.client = client
        self.keys = Keys(prefix)
        self.timeout_s = timeout_s
        self._write_timeout = max(timeout_s or 0.0, WRITE_TIMEOUT_S)
        self._sha: str | None = None
        self._groups: set[str] = set()  # consumer groups known to exist
        # group commit: small ingests that arrive in the same event-loop turn share one script call
        self._queued: list[tuple[Sequence[Event], asyncio.Future[IngestResult]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[list[IngestResult]]] = set()

    @classmethod
    def from_url(
        cls, url: str, prefix: str = K.DEFAULT_PREFIX, max_connections: int = 64, timeout_s: float | None = 0.05
    ) -> "RedisFeatureStore":
        if max_connections < 1:
            raise ValueError(f"max_connections: must be at least 1, got {max_connections}")
        # Sized on purpose (redis-py's async pool allows 100): under a burst, requests wait for a connection.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        return cls(aioredis.Redis(connection_pool=pool), prefix=prefix, timeout_s=timeout_s)

    async def _call(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.timeout_s):  # no extra task
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self.client.ping(), timeout=max(self.timeout_s or 0, 0.5)))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()

    # ---- writes ----

    async def ingest(self, events: Sequence[Event], now: float | None = None) -> IngestResult:
        if not events:
            return IngestResult(accepted=0, duplicates=0)
        if now is not None or len(events) > GROUP_COMMIT_MAX:
            return (await self._ingest_batches([events], now))[0]
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queued.append((events, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        queued, self._queued = self._queued, []
        self._flush_scheduled = False
        task = asyncio.ensure_future(self._ingest_batches([e for e, _ in queued], None))
        task.add_done_callback(lambda t: _settle(t, [f for _, f in queued]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ingest_batches(self, batches: Sequence[Sequence[Event]], now: float | None) -> list[IngestResult]:
        """One script call for several requests' events; each request gets its own counts back."""
        now = time.time() if now is None else now
        heads: list[list[Any]] = []
        args: list[Any] = [self.keys.prefix, b"", now]
        for events in batches:
            for e in events:
                head, recent, log = lua_event(normalize(e, now), now)
                heads.append(head)
                args.append(recent)
                args.append(log)
        args[1] = _msgpack.encode(heads)
        flags = await self._call(self._eval(args), timeout=self._write_timeout)
        out, pos = [], 0
        for events in batches:
            mine = flags[pos : pos + len(events)]
            pos += len(events)
            dups = [e.event_id for e, f in zip(events, mine) if not f]
            ids = [d for d in dups if d]
            out.append(IngestResult(accepted=len(events) - len(dups), duplicates=len(dups), duplicate_ids=ids))
        return out

    async def _eval(self, args: list[Any]) -> list[int]:
        if self._sha is None:
            self._sha = await self.client.script_load(_LUA)
        try:
            return await self.client.evalsha(self._sha, 0, *args)  # type: ignore[no-any-return]
        except NoScriptError:  # the server was restarted or flushed its script cache
            self._sha = await self.client.script_load(_LUA)
            return await self.client.evalsha(self._sha, 0, *args)  # type: ignore[no-any-return]

    async def upsert_items(self, items: Sequence[Item]) -> int:
        if not items:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            mapping: dict[str, Any] = {
                "j": _msgpack.encode(item),
                "cats": "|".join(item.categories),
                "avail": int(item.available),
            }
            if item.price is not None:
                mapping["price"] = item.price
            pipe.hset(self.keys.item(item.item_id), mapping=mapping)
            if item.price is None:
                pipe.hdel(self.keys.item(item.item_id), "price")
        pipe.sadd(self.keys.catalog_index, *[i.item_id for i in items])
        await self._call(pipe.execute(), timeout=self._write_timeout)
        return len(items)

    async def set_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        """HSET t:<name> on each person's hash; a person not seen yet gets the hash with PERSON_TTL."""
        people = list(traits.items())
        for start in range(0, len(people), TRAITS_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for person, values in people[start : start + TRAITS_CHUNK]:
                if values:
                    key = self.keys.person(person, "p")
                    pipe.hset(key, mapping={f"t:{k}": str(v) for k, v in values.items()})
                    pipe.expire(key, K.PERSON_TTL, nx=True)
            await self._call(pipe.execute(), timeout=self._write_timeout)
        return len(people)

    async def erase(self, customer_id: str) -> bool:
        """Delete the person's keys and every alias linked to them; remember both ids as erased. True when a
        profile existed. Events already in the offline log are dropped by its readers (erased.txt)."""
        person = await self.resolve(customer_id)
        aliases = await self._call(self.client.smembers(self.keys.person(person, "ids")))
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(self.keys.person(person, "p"))
        pipe.delete(*[self.keys.person(person, part) for part in PERSON_PARTS])
        for alias in aliases:
            kind, _, value = _s(alias).partition(":")  # type: ignore[union-attr]
            pipe.delete(self.keys.alias(kind, value))
        pipe.sadd(self.keys.erased, person, customer_id)
        res = await self._call(pipe.execute(), timeout=self._write_timeout)
        return bool(res[0])

    async def erased_ids(self) -> set[str]:
        return {_s(v) for v in await self._call(self.client.smembers(self.keys.erased))}  # type: ignore[misc]

    # ---- reads ----

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hget(self.keys.item(item_id), "j")
        blobs = await self._call(pipe.execute())
        return {i: _item_decoder.decode(b) for i, b in zip(item_ids, blobs) if b}

    async def item_ids(self) -> list[str]:
        members = await self._call(self.client.smembers(self.keys.catalog_index))
        return sorted(v.decode() for v in members)

    async def resolve(self, any_id: str) -> str:
        """One round trip: is it a person, an alias linked to one, or an anonymous person never linked?"""
        kinds = K.ALIAS_KINDS[1:]
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.keys.person(any_id, "p"))
        for kind in kinds:
            pipe.get(self.keys.alias(kind, any_id))
        for kind in kinds:
            pipe.exists(self.keys.person(K.anonymous_person(kind, any_id), "p"))
        res = await self._call(pipe.execute())
        if res[0]:
            return any_id
        for person in res[1 : 1 + len(kinds)]:
            if person:
                return _s(person)  # type: ignore[return-value]
        for kind, exists in zip(kinds, res[1 + len(kinds) :]):
            if exists:
                return K.anonymous_person(kind, any_id)
        return any_id

    async def profile(self, any_id: str, now: float | None = None) -> Profile | None:
        now = time.time() if now is None else now
        person = await self.resolve(any_id)
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.person(person, "p"))
        pipe.lrange(k.person(person, "r"), 0, PROFILE_RECENT - 1)
        pipe.zrevrange(k.person(person, "ia"), 0, PROFILE_AFFINITIES - 1, withscores=True)
        pipe.zrevrange(k.person(person, "ca"), 0, PROFILE_CATEGORIES - 1, withscores=True)
        pipe.zrevrange(k.person(person, "b"), 0, -1, withscores=True)
        pipe.zrevrange(k.person(person, "rt"), 0, -1, withscores=True)
        pipe.hgetall(k.person(person, "cart"))
        pipe.hgetall(k.person(person, "s"))
        pipe.smembers(k.person(person, "ids"))
        h, recent, ia, ca, bought, returned, cart, sess, ids = await self._call(pipe.execute())
        if not h:
            return None
        return build_profile(person, h, recent, ia, ca, bought, returned, cart, sess, ids, now)

    async def popular(
        self, scope: str = "all", window: Window = "pop", k: int = 100, now: float | None = None
    ) -> list[tuple[str, float]]:
        check_popular_args(window, k)
        now = time.time() if now is None else now
        if window == "pop":
            rows = await self._call(self.client.zrevrange(self.keys.popular(scope), 0, k - 1, withscores=True))
            f = K.read_factor(K.POPULAR_HALF_LIFE, now)
            return [(_s(i), s * f) for i, s in rows]  # type: ignore[misc]
        hours = trending_hours(now)
        pipe = self.client.pipeline(transaction=False)
        for h in hours:
            pipe.zrevrange(self.keys.trending(scope, h), 0, 4 * k, withscores=True)
        scores: dict[str, float] = {}
        for h, rows in zip(hours, await self._call(pipe.execute())):
            w = trending_weight(h, now)
            for item, s in rows:
                key = _s(item)
                scores[key] = scores.get(key, 0.0) + s * w  # type: ignore[index]
        return top_k(scores, k)

    # ---- the offline log ----

    async def _xreadgroup(self, group: str, consumer: str, start: str, count: int, block_ms: int) -> list[LogEntry]:
        """XREADGROUP, creating the group (at id 0, with the stream) the first time it is missing."""
        check_count(count)
        if group not in self._groups:
            await self._create_group(group)

        def read() -> Awaitable[Any]:
            return self.client.xreadgroup(group, consumer, {self.keys.log: start}, count=count, block=block_ms or None)

        timeout = self._write_timeout + block_ms / 1000
        try:
            res = await self._call(read(), timeout=timeout)
        except StoreUnavailable as exc:
            if "NOGROUP" not in str(exc):  # the stream (and its groups) was deleted since
                raise
            await self._create_group(group)
            res = await self._call(read(), timeout=timeout)
        return _decode_entries(res)

    async def _create_group(self, group: str) -> None:
        try:
            await self._call(self.client.xgroup_create(self.keys.log, group, id="0", mkstream=True))
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    async def log_read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[LogEntry]:
        return await self._xreadgroup(group, consumer, ">", count, block_ms)

    async def log_pending(self, group: str, consumer: str, count: int) -> list[LogEntry]:
        return await self._xreadgroup(group, consumer, "0", count, 0)

    async def log_ack(self, group: str, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.keys.log, group, *entry_ids)
        pipe.xdel(self.keys.log, *entry_ids)
        acked, _ = await self._call(pipe.execute(), timeout=self._write_timeout)
        return int(acked)

    async def log_length(self) -> int:
        return int(await self._call(self.client.xlen(self.keys.log)))


def check_popular_args(window: str, k: int) -> None:
    """Shared by both adapters: bad arguments are a ValueError naming the field."""
    if window not in ("pop", "trend"):
        raise ValueError(f"window: must be 'pop' or 'trend', got {window!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: must be a positive integer, got {k!r}")


def check_count(count: int) -> None:
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count: must be a positive integer, got {count!r}")


def top_k(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """Best first; ties by member, descending, as ZREVRANGE orders them (so both adapters agree)."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k]


def trending_hours(now: float) -> range:
    """The hourly trending buckets read at `now`: the last TRENDING_KEEP seconds."""
    hour = int(now // K.HOUR)
    return range(hour - K.TRENDING_KEEP // K.HOUR, hour + 1)


def trending_weight(hour: int, now: float) -> float:
    """An hour bucket's weight at `now`: halves every TRENDING_HALF_LIFE after the hour ends (1 while it runs)."""
    return min(1.0, 2.0 ** (-((now - (hour + 1) * K.HOUR) / K.TRENDING_HALF_LIFE)))


def _settle(task: "asyncio.Future[list[IngestResult]]", futures: list["asyncio.Future[IngestResult]"]) -> None:
    exc = None if task.cancelled() else task.exception()
    for i, fut in enumerate(futures):
        if fut.done():
            continue
        if task.cancelled():
            fut.cancel()
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(task.result()[i])


def _decode_entries(res: Any) -> list[LogEntry]:
    out: list[LogEntry] = []
    for _stream, entries in res or []:
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            eid = _s(entry_id)
            if fields[b"k"] == b"e":
                rec = decode_log_record(fields[b"d"])
                if b"p" in fields:  # entries written before the person id went into `d`
                    rec.person_id = _s(fields[b"p"])  # type: ignore[assignment]
                out.append((eid, rec))  # type: ignore[arg-type]
            else:
                out.append((eid, decode_link_record(fields[b"d"])))  # type: ignore[arg-type]
    return out


def build_profile(
    person: str,
    h: Mapping[bytes, bytes],
    recent: Sequence[bytes],
    ia: Sequence[tuple[bytes, float]],
    ca: Sequence[tuple[bytes, float]],
    bought: Sequence[tuple[bytes, float]],
    returned: Sequence[tuple[bytes, float]],
    cart: Mapping[bytes, bytes],
    sess: Mapping[bytes, bytes],
    ids: set[bytes],
    now: float,
) -> Profile:
    """Turn the raw replies of one pipelined read into a Profile, scores decayed to `now`."""
    hs = {_s(a): _s(b) for a, b in h.items()}
    counts, last_by_channel, traits = {}, {}, {}
    for f, v in hs.items():
        assert f is not None and v is not None
        if f.startswith("cnt:"):
            counts[f[4:]] = int(v)
        elif f.startswith("ls:"):
            last_by_channel[f[3:]] = float(v)
        elif f.startswith("t:"):
            traits[f[2:]] = v
    fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
    recents = sorted((_recent_decoder.decode(b) for b in recent), key=lambda r: -r.ts)
    session = None
    if sess:
        ss = {_s(a): _s(b) for a, b in sess.items()}
        started = float(ss.get("started") or 0)
        session = Session(
            session_id=ss.get("id") or "",
            started=started,
            last=float(ss.get("last") or 0),
            items=session_items(recents, started),
        )
    return Profile(
        customer_id=person,
        linked_ids=sorted(_s(i) for i in ids),  # type: ignore[type-var]
        first_seen=float(hs["first"]) if hs.get("first") else None,
        last_seen=float(hs["last"]) if hs.get("last") else None,
        country=hs.get("country"),
        counts=counts,
        last_seen_by_channel=last_by_channel,
        recent=recents,
        item_affinity=[(_s(i), s * fa) for i, s in ia],  # type: ignore[misc]
        category_affinity=[(_s(c), s * fa) for c, s in ca],  # type: ignore[misc]
        purchased={_s(i): s for i, s in bought},  # type: ignore[misc]
        returned={_s(i): s for i, s in returned},  # type: ignore[misc]
        cart={_s(i): int(q) for i, q in cart.items()},  # type: ignore[misc]
        session=session,
        monetary=float(hs.get("monetary") or 0.0),
        orders=int(hs.get("orders") or 0),
        traits=traits,
    )
