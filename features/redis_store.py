"""The Redis adapter of the FeatureStore port: one Lua call per ingested batch, one pipeline per profile read.

Owns the client and its sized connection pool; `close()` releases it (the service's lifespan calls it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from features import keys as K
from features.clock import Clock, wall_clock
from features.fastredis import FastRedis
from features.keys import Keys
from features.schema import (
    LIVE_CATEGORIES,
    LIVE_RECENT_SCAN,
    LiveFeatures,
    DecisionRecord,
    decode_decision_batch,
    decode_decision_record,
    Event,
    IngestResult,
    Item,
    Profile,
    RecentEvent,
    Session,
    decode_link_record,
    decode_log_record,
    encode_log_record,
    event_aliases,
    normalize,
    session_items,
    to_log_record,
)
from features.store import LogEntry, StoreUnavailable, Window

T = TypeVar("T")

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_recent_decoder = msgspec.json.Decoder(RecentEvent)
_recent_list_decoder = msgspec.json.Decoder(list[RecentEvent])
_item_decoder = msgspec.msgpack.Decoder(Item)

# The numbers the Lua script computes with, all from features/keys.py (decay weights and half-lives are applied in
# lua_event, before the call) ...
LUA_CONFIG: dict[str, Any] = {
    "session_ttl": K.SESSION_TTL,
    "trending_keep": K.TRENDING_KEEP,
    "recent_cap": K.RECENT_CAP,
    "item_aff_cap": K.ITEM_AFF_CAP,
    "cat_aff_cap": K.CAT_AFF_CAP,
    "purchased_cap": K.PURCHASED_CAP,
    "returned_cap": K.RETURNED_CAP,
    "popular_cap": K.POPULAR_CAP,
    "country_scopes_cap": K.COUNTRY_SCOPES_CAP,
    "country_pop_ttl": K.COUNTRY_POP_TTL,
}
# ... and the ones it passes on to Redis, as text: redis.call formats a Lua number with "%.17g" on every call.
LUA_TEXT: dict[str, Any] = {
    "person_ttl_text": str(K.PERSON_TTL),
    "cart_ttl_text": str(K.CART_TTL),
    "dedupe_ttl_text": str(K.DEDUPE_TTL),
    "item_stats_ttl_text": str(K.ITEM_STATS_TTL),
    "country_pop_ttl_text": str(K.COUNTRY_POP_TTL),
    "int_text": [str(i) for i in range(1, 65)],  # counts up to 64 need no formatting either
}


def _lua_literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    if isinstance(value, str):
        return json.dumps(value)  # ASCII digits here: a JSON string is a Lua string
    return repr(float(value)) if isinstance(value, float) else str(int(value))


# Compiled once by SCRIPT LOAD: per call, the config is a table constructor, not a JSON decode.
_LUA = (
    resources.files("features")
    .joinpath("lua/ingest.lua")
    .read_text(encoding="utf-8")
    .replace("__CONFIG__", _lua_literal(LUA_CONFIG | LUA_TEXT))
)

_PROFILE_LUA = resources.files("features").joinpath("lua/profile.lua").read_text(encoding="utf-8")
_LIVE_LUA = resources.files("features").joinpath("lua/live.lua").read_text(encoding="utf-8")
_TRENDING_LUA = resources.files("features").joinpath("lua/trending.lua").read_text(encoding="utf-8")
SCRIPTS = {"ingest": _LUA, "profile": _PROFILE_LUA, "live": _LIVE_LUA, "trending": _TRENDING_LUA}

PROFILE_RECENT = 50
PROFILE_AFFINITIES = 50
PROFILE_CATEGORIES = 20
PROFILE_ITEMS = K.PURCHASED_CAP + 16  # purchased/returned: all of them (trimming overshoots the cap by at most 15)
# Writes and log reads may legitimately take longer than a profile read (a 1,000-event batch is one script call),
# so they run under max(timeout_s, WRITE_TIMEOUT_S); reads use timeout_s.
WRITE_TIMEOUT_S = 10.0
GROUP_COMMIT_MAX = 10  # concurrent requests this small share one script call; larger batches go alone
TRAITS_CHUNK = 1000
PERSON_PARTS = ("p", "r", "ia", "ca", "b", "rt", "cart", "s", "ids")
# the offer state kept beside the profile (features/offer_store.py): contacts, state, outcome marks, export marks
OFFER_PARTS = ("ol", "os", "oo", "ox")


def lua_event(event: Event, now: float, keys: Keys) -> list[Any]:
    """The array the Lua script reads for one event (see the header of lua/ingest.lua; "" and 0 stand for absent).
    Everything that does not depend on what the store holds is computed here: key names, the decayed increments and
    the trending hour, and numbers the script passes on to Redis are text already. An event with a customer_id is
    logged with its person (the customer) in the record; the others with person_id "" for the script to fill in."""
    ts = event.ts
    etype, item, customer, eid = event.type, event.item_id, event.customer_id, event.event_id
    assert eid is not None
    ctx = event.context
    country, session = (ctx.country, ctx.session_id) if ctx is not None else (None, None)
    recent = _json.encode(
        RecentEvent(etype, event.channel, ts, item, event.offer_id, event.content_id, event.decision_id)
    )
    log = encode_log_record(to_log_record(event, customer or "", now, ts))
    aff = pop_w = pop = ""
    hour = 0
    if item:  # increments in hexadecimal: exact, a third of repr's cost, and strtod (Redis, Lua) reads them
        if (w := K.AFFINITY_WEIGHTS.get(etype)) is not None:
            aff = (w * K.decay_factor(K.AFFINITY_HALF_LIFE, ts)).hex()
        if (w := K.POPULARITY_WEIGHTS.get(etype)) is not None:
            pop_w, pop = _WEIGHT_TEXT[w], (w * K.decay_factor(K.POPULAR_HALF_LIFE, ts)).hex()
            hour = int(ts // K.HOUR)
            if (hour + 1) * K.HOUR + K.TRENDING_KEEP <= now:  # its trending bucket is gone already
                hour = 0
    ids: list[str] | str = event_aliases(event) or ""
    n = len(log)  # the record as a msgpack str 8, 16 or 32 (the script's cmsgpack cannot read bin)
    head = b"\xd9" + n.to_bytes(1, "big") if n < 0x100 else b"\xda" + n.to_bytes(2, "big") if n < 0x10000 else (
        b"\xdb" + n.to_bytes(4, "big"))
    return [
        keys.dedupe(eid),
        eid,
        ids,
        customer or "",
        etype,
        event.channel,
        ts,
        repr(ts),
        item or "",
        event.quantity or 0,
        event.value or 0.0,
        country or "",
        session or "",
        aff,
        pop_w,
        pop,
        hour,
        -1 if customer else person_offset(log, eid),
        recent.decode(),  # JSON: UTF-8 text
        msgspec.Raw(head + log),
    ]


# Popularity weights as the script adds them to trending buckets: whole numbers print as integers ("4", not "4.0").
_WEIGHT_TEXT = {w: (str(int(w)) if w == int(w) else repr(w)) for w in K.POPULARITY_WEIGHTS.values()}


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

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = K.DEFAULT_PREFIX,
        timeout_s: float | None = None,
        clock: Clock = wall_clock,
        fast: FastRedis | None = None,
    ) -> None:
        self.clock = clock
        self._fast = fast  # the hot-path client for script calls (see features/fastredis.py); None: redis-py
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive or None, got {timeout_s}")
        self.client = client
        self.keys = Keys(prefix)
        self.timeout_s = timeout_s
        self._write_timeout = max(timeout_s or 0.0, WRITE_TIMEOUT_S)
        self._shas: dict[str, str] = {}
        self._groups: set[str] = set()  # consumer groups known to exist
        # group commit: small ingests that arrive in the same event-loop turn share one script call
        self._queued: list[tuple[Sequence[Event], asyncio.Future[IngestResult]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[list[IngestResult]]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = K.DEFAULT_PREFIX,
        max_connections: int = 64,
        timeout_s: float | None = 0.05,
        clock: Clock = wall_clock,
    ) -> "RedisFeatureStore":
        if max_connections < 1:
            raise ValueError(f"max_connections: must be at least 1, got {max_connections}")
        # Sized on purpose (redis-py's async pool allows 100): under a burst, requests wait for a connection.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        return cls(aioredis.Redis(connection_pool=pool), prefix=prefix, timeout_s=timeout_s, clock=clock,
                   fast=FastRedis.from_url(url))

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
        if self._fast is not None:
            await self._fast.close()
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
        now = self.clock() if now is None else now
        keys = self.keys
        heads = [lua_event(normalize(e, now), now, keys) for events in batches for e in events]
        flags = await self._call(self._eval([keys.prefix, _msgpack.encode(heads), now]), timeout=self._write_timeout)
        out, pos = [], 0
        for events in batches:
            mine = flags[pos : pos + len(events)]
            pos += len(events)
            dups = [e.event_id for e, f in zip(events, mine) if not f]
            ids = [d for d in dups if d]
            out.append(IngestResult(accepted=len(events) - len(dups), duplicates=len(dups), duplicate_ids=ids))
        return out

    async def _eval(self, args: list[Any]) -> list[int]:
        return await self._eval_script("ingest", args)  # type: ignore[no-any-return]

    async def _eval_script(self, name: str, args: Sequence[Any]) -> Any:
        """EVALSHA of one of the store's scripts, loading it on first use or after the server lost its cache."""
        return await self.run_script(SCRIPTS[name], (), args, name=name)

    async def run_script(self, source: str, keys: Sequence[Any], args: Sequence[Any], name: str | None = None) -> Any:
        """EVALSHA of a Lua script on the hot-path client (loaded on first use, reloaded if the server forgot it).
        Other modules' scripts (rate limits, offers) run through here too. Errors are redis-py's; wrap the call in
        the store's timeout yourself (see `call`)."""
        key = name or source
        sha = self._shas.get(key)
        if sha is None:
            sha = self._shas[key] = await self.client.script_load(source)
        try:
            return await self._evalsha(sha, keys, args)
        except NoScriptError:  # the server was restarted or flushed its script cache
            sha = self._shas[key] = await self.client.script_load(source)
            return await self._evalsha(sha, keys, args)

    async def _evalsha(self, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._fast is not None:
            return await self._fast.call("EVALSHA", sha, len(keys), *keys, *args)
        return await self.client.evalsha(sha, len(keys), *keys, *args)

    async def call(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """Await a Redis operation under the store's read timeout; StoreUnavailable on any failure or overrun."""
        return await self._call(aw, timeout)

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
        pipe.incr(self.keys.catalog_version)
        await self._call(pipe.execute(), timeout=self._write_timeout)
        return len(items)

    async def catalog_version(self) -> int:
        return int(await self._call(self.client.get(self.keys.catalog_version)) or 0)

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
        pipe.delete(*[self.keys.person(person, part) for part in PERSON_PARTS + OFFER_PARTS])
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
        """One round trip. A qualified id ("anonymous:abc", see keys.qualified_alias) is that alias's person, else
        the anonymous person of that name. A bare id: a person (customer), an alias linked to one, or an anonymous
        person never linked?"""
        if (alias := K.qualified_alias(any_id)) is not None:
            owner = await self._call(self.client.get(self.keys.alias(*alias)))
            return _s(owner) or any_id  # type: ignore[return-value]
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
        """Resolution and every part of the profile in one script call (one round trip, flat replies)."""
        now = self.clock() if now is None else now
        args = (self.keys.prefix, any_id, PROFILE_RECENT, PROFILE_AFFINITIES, PROFILE_CATEGORIES, PROFILE_ITEMS)
        res = await self._call(self._eval_script("profile", args))
        if not res or not res[0]:
            return None
        return build_profile_flat(res, now)

    async def live(self, any_id: str, since: float, now: float | None = None) -> LiveFeatures | None:
        now = self.clock() if now is None else now
        args = (self.keys.prefix, any_id, repr(float(since)), LIVE_RECENT_SCAN, LIVE_CATEGORIES, repr(float(now)),
                K.SESSION_TTL)
        res = await self._call(self._eval_script("live", args))
        if not res or not res[0]:
            return None
        return build_live(res, now)

    async def popular(
        self, scope: str = "all", window: Window = "pop", k: int = 100, now: float | None = None
    ) -> list[tuple[str, float]]:
        check_popular_args(window, k)
        now = self.clock() if now is None else now
        if window == "pop":
            rows = await self._call(self.client.zrevrange(self.keys.popular(scope), 0, k - 1, withscores=True))
            f = K.read_factor(K.POPULAR_HALF_LIFE, now)
            return [(_s(i), s * f) for i, s in rows]  # type: ignore[misc]
        hours = trending_hours(now)
        keys = [self.keys.trending_scratch(scope), *(self.keys.trending(scope, h) for h in hours)]
        args = [k, *(repr(trending_weight(h, now)) for h in hours)]
        rows = await self._call(self.run_script(SCRIPTS["trending"], keys, args, name="trending"))
        return [(_s(rows[i]), float(rows[i + 1])) for i in range(0, len(rows), 2)]

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

    async def log_decisions(self, records: Sequence[DecisionRecord]) -> int:
        if not records:
            return 0
        # one stream entry for the whole batch (kind "D": a msgpack array of records): the drainer expands it
        payload = _msgpack.encode(list(records))
        await self._call(self.client.xadd(self.keys.log, {"k": "D", "d": payload}), timeout=self._write_timeout)
        return len(records)

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
            elif fields[b"k"] == b"d":
                out.append((eid, decode_decision_record(fields[b"d"])))  # type: ignore[arg-type]
            elif fields[b"k"] == b"D":  # a batch of decisions in one entry
                out.extend((eid, rec) for rec in decode_decision_batch(fields[b"d"]))  # type: ignore[misc]
            else:
                out.append((eid, decode_link_record(fields[b"d"])))  # type: ignore[arg-type]
    return out


def _pairs(flat: Sequence[bytes]) -> list[tuple[str, float]]:
    return [(a.decode(), float(b)) for a, b in zip(flat[0::2], flat[1::2])]


def build_profile_flat(res: Sequence[Any], now: float) -> Profile:
    """A Profile from the profile script's reply: [person, p, r, ia, ca, b, rt, cart, s, ids] (flat lists)."""
    person, h, recent, ia, ca, bought, returned, cart, sess, ids = res
    hs = {a.decode(): b.decode() for a, b in zip(h[0::2], h[1::2])}
    counts: dict[str, int] = {}
    last_by_channel: dict[str, float] = {}
    traits: dict[str, str] = {}
    for f, v in hs.items():
        c = f[:2]
        if c == "cn" and f.startswith("cnt:"):
            counts[f[4:]] = int(v)
        elif c == "ls" and f.startswith("ls:"):
            last_by_channel[f[3:]] = float(v)
        elif c == "t:":
            traits[f[2:]] = v
    fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
    recents = _recent_list_decoder.decode(b"[" + b",".join(recent) + b"]") if recent else []
    recents.sort(key=lambda r: -r.ts)
    session = None
    ss = {a.decode(): b.decode() for a, b in zip(sess[0::2], sess[1::2])}
    if ss and K.session_open(float(ss.get("last") or 0), now):  # else it is over (as in the embedded store)
        started = float(ss.get("started") or 0)
        session = Session(session_id=ss.get("id") or "", started=started, last=float(ss.get("last") or 0),
                          items=session_items(recents, started))
    return Profile(
        customer_id=person.decode(),
        linked_ids=sorted(i.decode() for i in ids),
        first_seen=float(hs["first"]) if hs.get("first") else None,
        last_seen=float(hs["last"]) if hs.get("last") else None,
        country=hs.get("country"),
        counts=counts,
        last_seen_by_channel=last_by_channel,
        recent=recents,
        item_affinity=[(i, s * fa) for i, s in _pairs(ia)],
        category_affinity=[(c, s * fa) for c, s in _pairs(ca)],
        purchased=dict(_pairs(bought)),
        returned=dict(_pairs(returned)),
        cart={a.decode(): int(b) for a, b in zip(cart[0::2], cart[1::2])},
        session=session,
        monetary=float(hs.get("monetary") or 0.0),
        orders=int(hs.get("orders") or 0),
        traits=traits,
    )


def build_live(res: Sequence[Any], now: float) -> LiveFeatures:
    """LiveFeatures from the live script's reply: [person, p, b, b_since, rt, cart, s, r, ca] (see lua/live.lua: p holds
    only the fields read here, b and rt are joined by newlines; every value decoded is one that is used)."""
    person, h, bought, since, returned, cart, sess, recent, ca = res
    country: str | None = None
    orders = events = 0
    traits: dict[str, str] = {}
    for i in range(0, len(h), 2):
        f, v = h[i], h[i + 1]
        if f == b"country":
            country = v.decode()
        elif f == b"orders":
            orders = int(v or 0)
        elif f == b"n":
            events = int(v or 0)
        elif f[:2] == b"t:":
            traits[f[2:].decode()] = v.decode()
    session_ids: list[str] = []
    if sess:
        ss = {a.decode(): b.decode() for a, b in zip(sess[0::2], sess[1::2])}
        last = float(ss.get("last") or 0)
        if recent and K.session_open(last, now):
            recents = _recent_list_decoder.decode(b"[" + b",".join(recent) + b"]")
            recents.sort(key=lambda r: -r.ts)
            session_ids = session_items(recents, float(ss.get("started") or 0))
    fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
    return LiveFeatures(
        person=person.decode(),
        country=country,
        orders=orders,
        events=events,
        traits=traits,
        purchased=bought.decode().split("\n") if bought else [],
        purchased_since=dict(_pairs(since)),
        returned=sorted(returned.decode().split("\n")) if returned else [],
        cart=[b.decode() for b in cart],
        session_items=session_ids,
        category_affinity=[(c.decode(), float(v) * fa) for c, v in zip(ca[0::2], ca[1::2])],
    )
