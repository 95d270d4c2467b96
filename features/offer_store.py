"""The offer store: the offer catalog, per-customer contact ledgers, acceptance counts, export marks and audience
indexes. A Protocol with a Redis adapter (beside a RedisFeatureStore: same client, same prefix) and an in-process one
(beside the embedded MemoryFeatureStore).

Key layout (P = the feature store's prefix; a customer's keys carry the hash tag {person}, so one customer's ledger
lives in one Redis Cluster slot with the rest of their profile):

| key                        | type   | holds                                                         | bound              |
|----------------------------|--------|---------------------------------------------------------------|--------------------|
| P:o:catalog                | hash   | offer id -> msgpack Offer                                     | the catalog        |
| P:o:catalog:v              | string | catalog version, INCR on every change (caches compare it)     | none               |
| P:o:{offer}:post           | hash   | `<segment>\\x1f{i,a,d}` -> impressions, accepts, dismisses     | the catalog        |
| P:c:{person}:ol            | zset   | contacts: `decision\\x1foffer\\x1fchannel\\x1fsegment` -> ts     | trimmed to keep_s; TTL keep_s + 1 d |
| P:c:{person}:os            | hash   | ver (bumped by every reservation and accept/dismiss), a:<offer> accept ts, d:<offer> last dismiss ts, seg (indexed segment) | TTL PERSON_TTL |
| P:c:{person}:oo            | zset   | outcome marks (`e` event id, `i`/`a`/`d` decision+offer) -> ts | OUTCOME_KEEP       |
| P:c:{person}:ox            | hash   | export id -> the NDJSON line written for this customer        | TTL export resume  |
| P:o:seg:{segment}          | zset   | person ids in the segment (score 0: lexicographic, for cursors) | maintained by index_traits |
| P:o:consent:{channel}      | zset   | person ids who granted consent for the channel                | maintained by index_traits |
| P:o:segs                   | set    | segment names that have an index                              | none               |

Reservation (`reserve`) and outcome updates (`record_outcomes`) are Lua scripts (features/lua/offers_*.lua): the
check of caps and rules, the contact writes and the decision's offline-log record (XADD) happen in one atomic step;
so do an outcome's once-per-event mark, its ledger effect and its acceptance counts.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from importlib import resources
from typing import Any, Protocol, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from features import keys as K
from features.memory_store import MemoryFeatureStore
from features.offers import Offer, decode_offer, encode_offer
from features.redis_store import RedisFeatureStore
from features.schema import DecisionRecord, Profile, encode_decision_record
from features.store import FeatureStore, StoreUnavailable
from features.traits import publish_traits

T = TypeVar("T")
SEP = "\x1f"
UNKNOWN_SEGMENT = "unknown"
TOP_ITEMS = 30  # a customer's strongest item affinities read per decision (affinity beyond is weak)
TOP_CATEGORIES = 10
OUTCOME_KEEP = int(30 * K.DAY)  # outcome marks (event replay, once per decision) are kept this long
STATE_TTL = K.PERSON_TTL
WRITE_TIMEOUT_S = 10.0

_msgpack = msgspec.msgpack.Encoder()
_read_reply = msgspec.msgpack.Decoder()


def _lua(name: str) -> str:
    return resources.files("features").joinpath(f"lua/{name}").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=4096)
def clean_segment(segment: str | None) -> str:
    """The segment as ledgers and counts store it: control characters (the member separator) removed."""
    if not segment:
        return UNKNOWN_SEGMENT
    return "".join(c for c in segment if c >= " ") or UNKNOWN_SEGMENT


# ---- what the store reads and writes ----


class Contact(msgspec.Struct, array_like=True, frozen=True):
    """One offer made to a customer: counts against caps and the offer's own limit."""

    ts: float
    decision_id: str
    offer_id: str
    channel: str
    segment: str

    @property
    def member(self) -> str:
        return SEP.join((self.decision_id, self.offer_id, self.channel, self.segment))


class LedgerState(msgspec.Struct, gc=False):
    version: int = 0
    contacts: Sequence[Contact] = ()  # oldest first
    accepted: dict[str, float] = {}  # offer -> when accepted (suppressed on every channel from then on)
    dismissed: dict[str, float] = {}  # offer -> last dismiss (cool-down start)


class OfferProfile(msgspec.Struct, gc=False):
    """The parts of a profile offer decisions read, under features.schema.Profile's names (a decision takes either):
    what the Redis offer read returns, built without the rest of a Profile (an export builds one per customer)."""

    customer_id: str
    last_seen: float | None = None
    country: str | None = None
    counts: dict[str, int] = {}
    item_affinity: list[tuple[str, float]] = []  # decayed to read time, best first: the catalog's only
    category_affinity: list[tuple[str, float]] = []
    monetary: float = 0.0
    orders: int = 0
    traits: dict[str, str] = {}


class CustomerRecord(msgspec.Struct, gc=False):
    """What one read returns per customer: the profile (None: unknown), owned rule items, the ledger. (Records, like
    ledgers and reservations, are not tracked by the garbage collector: an export holds thousands, in no cycle.)"""

    person_id: str
    profile: Profile | OfferProfile | None
    owned: dict[str, float]  # item -> last purchase ts, for the items eligibility rules mention
    ledger: LedgerState


class ReadSpec(msgspec.Struct, frozen=True, dict=True):
    """What a decision reads about each customer beyond the profile hash and the ledger: the affinities to the
    catalog's items and categories (among the customer's strongest TOP_ITEMS / TOP_CATEGORIES), and the purchase
    times of the items eligibility rules mention."""

    items: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    owned: tuple[str, ...] = ()

    @functools.cached_property
    def item_set(self) -> frozenset[str]:
        return frozenset(self.items)

    @functools.cached_property
    def category_set(self) -> frozenset[str]:
        return frozenset(self.categories)


class CustomerBatch(msgspec.Struct):
    records: list[CustomerRecord]
    catalog_version: int


class CapCheck(msgspec.Struct, array_like=True):
    key: str  # a channel, or "total"
    max: int
    window_s: float


class OfferCheck(msgspec.Struct, array_like=True):
    offer_id: str
    limit: int  # 0: no per-customer limit
    limit_window_s: float
    cooldown_s: float


class Reservation(msgspec.Struct, gc=False):
    """A decision to reserve: valid only if the customer's ledger is still at `expected_version`."""

    person_id: str
    expected_version: int
    contacts: list[Contact]
    caps: list[CapCheck]
    checks: list[OfferCheck]
    record: DecisionRecord
    export_id: str | None = None
    line: bytes | None = None


class Reserved(msgspec.Struct, omit_defaults=True):
    status: str  # ok | duplicate | conflict | refused
    reason: str | None = None
    ledger: LedgerState | None = None  # the current ledger, for conflict and refused
    line: bytes | None = None  # duplicate: the line this export wrote for the customer before


class Outcome(msgspec.Struct):
    event_id: str
    person_id: str
    type: str  # offer_impression | offer_accept | offer_dismiss
    offer_id: str
    decision_id: str | None
    ts: float


class OutcomeCount(msgspec.Struct):
    offer_id: str
    segment: str
    impression: int
    accept: int
    dismiss: int


# offer -> segment -> [impressions, accepts, dismisses]
Posteriors = dict[str, dict[str, list[int]]]


class OfferStore(Protocol):
    backend: str

    async def upsert_offers(self, offers: Sequence[Offer]) -> int: ...

    async def load_catalog(self) -> tuple[int, dict[str, Offer]]:
        """(version, offer id -> offer)."""
        ...

    async def delete_offer(self, offer_id: str) -> bool: ...

    async def posteriors(self, offer_ids: Sequence[str]) -> Posteriors: ...

    async def read_customers(self, person_ids: Sequence[str], need: ReadSpec, keep_s: float,
                             now: float, resolve: bool = False) -> CustomerBatch:
        """Profiles (the parts decisions use: `need`), owned rule items and ledgers, plus the catalog version: one
        round trip for the whole batch. `resolve`: the ids are any linked ids (records carry the person id)."""
        ...

    async def reserve(self, reservations: Sequence[Reservation], now: float, keep_s: float,
                      export_ttl_s: float) -> list[Reserved]:
        """Check and reserve each decision atomically, logging its DecisionRecord in the same step."""
        ...

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> list[OutcomeCount]:
        """Apply outcome events once per event id; returns the acceptance counts added (already applied)."""
        ...

    async def index_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        """Keep the audience indexes (segment, consent_<channel>) in step with published traits."""
        ...

    async def audience(self, kind: str, key: str, after: str | None, count: int) -> list[str]:
        """Person ids of an index (kind "segment" or "consent") after `after`, in lexicographic order."""
        ...

    async def erased(self, person_ids: Sequence[str]) -> set[str]: ...


def lean_profile(person: str, h: Sequence[str], items: list[tuple[str, float]],
                 categories: list[tuple[str, float]]) -> OfferProfile | None:
    """The parts of a profile offer decisions use: the person hash as a flat [field, value, ...] list, and the
    affinities (already decayed) of the catalog's items and categories. None: nobody by that id."""
    if not h:
        return None
    counts: dict[str, int] = {}
    traits: dict[str, str] = {}
    last = country = monetary = orders = None
    pairs = iter(h)
    for f, v in zip(pairs, pairs):
        c = f[:1]
        if c == "t" and f[:2] == "t:":
            traits[f[2:]] = v
        elif c == "c":
            if f[:4] == "cnt:":
                counts[f[4:]] = int(v) if v.isdigit() else int(float(v))
            elif f == "country":
                country = v
        elif f == "last":
            last = v
        elif f == "monetary":
            monetary = v
        elif f == "orders":
            orders = v
    return OfferProfile(
        person,
        float(last) if last is not None else None,
        country,
        counts,
        sorted(items, key=lambda kv: -kv[1]) if len(items) > 1 else items,
        sorted(categories, key=lambda kv: -kv[1]) if len(categories) > 1 else categories,
        float(monetary or 0.0),
        int(float(orders or 0)),
        traits,
    )


def parse_ledger(zrange: Sequence[Any], state: Mapping[bytes, bytes]) -> LedgerState:
    """A ledger from ZRANGE ... WITHSCORES (pairs, or a flat list as Lua returns it) and the state hash."""
    contacts: Sequence[Contact] = ()
    if zrange:
        if not isinstance(zrange[0], (tuple, list)):
            zrange = [(zrange[j], float(zrange[j + 1])) for j in range(0, len(zrange), 2)]
        found = []
        for member, score in zrange:
            parts = (member.decode() if isinstance(member, bytes) else member).split(SEP)
            if len(parts) == 4:
                found.append(Contact(float(score), parts[0], parts[1], parts[2], parts[3]))
        found.sort(key=lambda c: c.ts)
        contacts = found
    if isinstance(state, list):  # HGETALL through Lua: a flat list
        state = {state[j]: state[j + 1] for j in range(0, len(state), 2)}
    version, accepted, dismissed = 0, {}, {}
    for f, v in state.items():
        key = f.decode() if isinstance(f, bytes) else f
        val = v.decode() if isinstance(v, bytes) else v
        if key == "ver":
            version = int(val)
        elif key.startswith("a:"):
            accepted[key[2:]] = float(val)
        elif key.startswith("d:"):
            dismissed[key[2:]] = float(val)
    return LedgerState(version, contacts, accepted, dismissed)


def _traits_changes(traits: Mapping[str, Mapping[str, str]]) -> tuple[dict[str, str], dict[str, dict[str, bool]]]:
    """person -> new segment, person -> {channel: granted?} from a traits mapping."""
    segments: dict[str, str] = {}
    consents: dict[str, dict[str, bool]] = {}
    for person, values in traits.items():
        for name, value in values.items():
            if name == "segment":
                segments[person] = clean_segment(value)
            elif name.startswith("consent_") and not name.endswith("_at"):
                consents.setdefault(person, {})[name[8:]] = str(value).strip().lower() in GRANTED_VALUES
    return segments, consents


GRANTED_VALUES = frozenset({"granted", "true", "yes", "1", "opt-in", "opted_in"})


# ---- Redis ----


class OfferKeys:
    """Key names of the offer store under one prefix (the feature store's)."""

    __slots__ = ("_k", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._k = K.Keys(prefix)

    @property
    def catalog(self) -> str:
        return f"{self.prefix}:o:catalog"

    @property
    def catalog_version(self) -> str:
        return f"{self.prefix}:o:catalog:v"

    def posterior(self, offer_id: str) -> str:
        return f"{self.prefix}:o:{{{offer_id}}}:post"

    def ledger(self, person: str) -> str:
        return self._k.person(person, "ol")

    def state(self, person: str) -> str:
        return self._k.person(person, "os")

    def marks(self, person: str) -> str:
        return self._k.person(person, "oo")

    def exported(self, person: str) -> str:
        return self._k.person(person, "ox")

    def person_hash(self, person: str) -> str:
        return self._k.person(person, "p")

    def segment_index(self, segment: str) -> str:
        return f"{self.prefix}:o:seg:{{{segment}}}"

    def consent_index(self, channel: str) -> str:
        return f"{self.prefix}:o:consent:{{{channel}}}"

    @property
    def segments(self) -> str:
        return f"{self.prefix}:o:segs"


class _Script:
    """A script run in a redis-py pipeline (the outcome updates), with its SHA once loaded."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha: str | None = None


_RESERVE = _lua("offers_reserve.lua")
_OUTCOME = _lua("offers_outcome.lua")
_READ = _lua("offers_read.lua")


class RedisOfferStore:
    """The offer store on the Redis of a RedisFeatureStore (its client, prefix and timeout)."""

    backend = "redis"

    def __init__(self, store: RedisFeatureStore) -> None:
        self.store = store
        self.client: aioredis.Redis = store.client
        self.keys = OfferKeys(store.keys.prefix)
        self.timeout_s = store.timeout_s
        self._outcome = _Script(_OUTCOME)

    async def _call(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.timeout_s):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    # ---- catalog ----

    async def upsert_offers(self, offers: Sequence[Offer]) -> int:
        if not offers:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.catalog, mapping={o.offer_id: encode_offer(o) for o in offers})
        pipe.incr(self.keys.catalog_version)
        await self._call(pipe.execute(), WRITE_TIMEOUT_S)
        return len(offers)

    async def load_catalog(self) -> tuple[int, dict[str, Offer]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.catalog_version)
        pipe.hgetall(self.keys.catalog)
        version, raw = await self._call(pipe.execute(), WRITE_TIMEOUT_S)
        return int(version or 0), {k.decode(): decode_offer(v) for k, v in raw.items()}

    async def delete_offer(self, offer_id: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.catalog, offer_id)
        pipe.incr(self.keys.catalog_version)
        removed, _ = await self._call(pipe.execute(), WRITE_TIMEOUT_S)
        return bool(removed)

    async def posteriors(self, offer_ids: Sequence[str]) -> Posteriors:
        if not offer_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for o in offer_ids:
            pipe.hgetall(self.keys.posterior(o))
        out: Posteriors = {}
        for o, h in zip(offer_ids, await self._call(pipe.execute(), WRITE_TIMEOUT_S)):
            cells: dict[str, list[int]] = {}
            for f, v in h.items():
                seg, _, kind = f.decode().rpartition(SEP)
                cell = cells.setdefault(seg, [0, 0, 0])
                cell["iad".index(kind)] = int(v)
            out[o] = cells
        return out

    # ---- customers ----

    async def _script(self, source: str, name: str, args: Sequence[Any], timeout: float | None) -> Any:
        """A script on the store's hot-path client (RedisFeatureStore.run_script: auto-pipelined, loaded on first
        use and again after the server forgot it), under a timeout."""
        return await self._call(self.store.run_script(source, (), args, name=name), timeout)

    async def read_customers(self, person_ids: Sequence[str], need: ReadSpec, keep_s: float,
                             now: float, resolve: bool = False) -> CustomerBatch:
        """One read-only script call for the whole batch (features/lua/offers_read.lua): no per-command packing
        or reply parsing in the client. `resolve`: the ids are any linked ids, resolved in the same call. The
        script returns only the affinities of the catalog's items and categories (among the customer's strongest),
        scores as numbers."""
        args = _msgpack.encode([self.keys.prefix, list(person_ids), f"({now - keep_s:.6f}", TOP_ITEMS,
                                TOP_CATEGORIES, need.owned, K.ALIAS_KINDS[1:] if resolve else (), need.items,
                                need.categories])
        timeout = None if self.timeout_s is None else self.timeout_s * (1 + len(person_ids) / 50)
        res = _read_reply.decode(await self._script(_READ, "offers_read", [args], timeout))
        fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
        owned_items = need.owned
        records = []
        for p, h, ia, ca, own, ledger, state in res[1:]:
            items = [(ia[j], ia[j + 1] * fa) for j in range(0, len(ia), 2)] if ia else []
            cats = [(ca[j], ca[j + 1] * fa) for j in range(0, len(ca), 2)] if ca else []
            bought = {owned_items[own[j]]: float(own[j + 1]) for j in range(0, len(own), 2)} if own else {}
            records.append(CustomerRecord(p, lean_profile(p, h, items, cats), bought,
                                          parse_ledger(ledger, state) if ledger or state else LedgerState()))
        return CustomerBatch(records, int(res[0] or 0))

    async def reserve(self, reservations: Sequence[Reservation], now: float, keep_s: float,
                      export_ttl_s: float) -> list[Reserved]:
        if not reservations:
            return []
        if self.store.keys.log != f"{self.keys.prefix}:log":
            raise ValueError("offers_reserve.lua builds the log key from the prefix; the store's differs")
        # the caps and per-offer checks of a batch repeat: sent once, referred to by index (1-based, for Lua)
        caps: dict[tuple[Any, ...], int] = {}
        checks: dict[tuple[Any, ...], int] = {}
        # the same objects repeat too (a batch's cap list, the catalog's offer checks): indexed once, by identity
        # (the reservations hold them for the whole call)
        caps_of: dict[int, list[int]] = {}
        check_of: dict[int, int] = {}
        items = []
        blobs: list[bytes] = []
        offset = 0
        for r in reservations:
            rec, line = encode_decision_record(r.record), r.line or b""
            contacts: list[Any] = []
            for c in r.contacts:
                contacts += (c.member, c.ts, c.channel, c.offer_id)
            cap_ix = caps_of.get(id(r.caps))
            if cap_ix is None:
                cap_ix = caps_of[id(r.caps)] = [caps.setdefault((c.key, c.max, c.window_s), len(caps) + 1)
                                                for c in r.caps]
            check_ix = []
            for c in r.checks:
                j = check_of.get(id(c))
                if j is None:
                    j = check_of[id(c)] = checks.setdefault((c.offer_id, c.limit, c.limit_window_s, c.cooldown_s),
                                                            len(checks) + 1)
                check_ix.append(j)
            items.append([r.person_id, r.expected_version, r.export_id or "", contacts, cap_ix, check_ix,
                          offset, len(rec), offset + len(rec), len(line)])
            blobs += [rec, line]
            offset += len(rec) + len(line)
        args = _msgpack.encode([now, keep_s, STATE_TTL, int(export_ttl_s), self.keys.prefix, list(caps),
                                list(checks), items])
        replies = await self._script(_RESERVE, "offers_reserve", [args, b"".join(blobs)], WRITE_TIMEOUT_S)
        out = []
        for rep in replies:
            code = int(rep[0])
            if code == 1:
                out.append(Reserved("ok"))
            elif code == 2:
                out.append(Reserved("duplicate", line=rep[1]))
            else:
                out.append(Reserved("conflict" if code == 3 else "refused", reason=rep[1].decode(),
                                    ledger=parse_ledger(rep[2], rep[3])))
        return out

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> list[OutcomeCount]:
        """One script call per event (pipelined), each marking the event and adding its counts to the offer's
        posterior atomically: a retry after any failure counts an event once."""
        if not outcomes:
            return []
        if self._outcome.sha is None:
            self._outcome.sha = await self._call(self.client.script_load(self._outcome.source))
        ok = self.keys

        def run() -> Awaitable[list[Any]]:
            sha = self._outcome.sha
            assert sha is not None
            pipe = self.client.pipeline(transaction=False)
            for o in outcomes:
                p = o.person_id
                pipe.evalsha(sha, 5, ok.ledger(p), ok.state(p), ok.marks(p), ok.person_hash(p),
                             ok.posterior(o.offer_id), o.event_id, o.type, o.offer_id, o.decision_id or "",
                             repr(o.ts), repr(now), OUTCOME_KEEP, STATE_TTL)
            return pipe.execute()

        try:
            replies = await self._call(run(), WRITE_TIMEOUT_S)
        except StoreUnavailable as exc:
            if "NoScript" not in str(exc):
                raise
            self._outcome.sha = await self._call(self.client.script_load(self._outcome.source))
            replies = await self._call(run(), WRITE_TIMEOUT_S)
        return [OutcomeCount(o.offer_id, r[3].decode(), int(r[0]), int(r[1]), int(r[2]))
                for o, r in zip(outcomes, replies)]

    # ---- audiences ----

    async def index_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        segments, consents = _traits_changes(traits)
        people = list(segments)
        ok = self.keys
        for start in range(0, max(len(people), 1), 1000):
            chunk = people[start: start + 1000]
            if not chunk:
                break
            pipe = self.client.pipeline(transaction=False)
            for p in chunk:
                pipe.hget(ok.state(p), "seg")
            old = await self._call(pipe.execute(), WRITE_TIMEOUT_S)
            pipe = self.client.pipeline(transaction=False)
            for p, before in zip(chunk, old):
                new = segments[p]
                if before is not None and before.decode() != new:
                    pipe.zrem(ok.segment_index(before.decode()), p)
                pipe.zadd(ok.segment_index(new), {p: 0})
                pipe.hset(ok.state(p), "seg", new)
                pipe.expire(ok.state(p), STATE_TTL)
            pipe.sadd(ok.segments, *{segments[p] for p in chunk})
            await self._call(pipe.execute(), WRITE_TIMEOUT_S)
        if consents:
            pipe = self.client.pipeline(transaction=False)
            for p, by_channel in consents.items():
                for channel, granted in by_channel.items():
                    if granted:
                        pipe.zadd(ok.consent_index(channel), {p: 0})
                    else:
                        pipe.zrem(ok.consent_index(channel), p)
            await self._call(pipe.execute(), WRITE_TIMEOUT_S)
        return len(set(segments) | set(consents))

    async def audience(self, kind: str, key: str, after: str | None, count: int) -> list[str]:
        index = self.keys.segment_index(key) if kind == "segment" else self.keys.consent_index(key)
        lo = f"({after}" if after is not None else "-"
        rows = await self._call(self.client.zrange(index, lo, "+", bylex=True, offset=0, num=count), WRITE_TIMEOUT_S)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in rows]

    async def erased(self, person_ids: Sequence[str]) -> set[str]:
        if not person_ids:
            return set()
        flags = await self._call(self.client.smismember(self.store.keys.erased, list(person_ids)), WRITE_TIMEOUT_S)
        return {p for p, f in zip(person_ids, flags) if f}

    async def reindex(self) -> int:
        """Rebuild the segment and consent indexes from every person's published traits (SCAN; for stores whose
        traits were published without index_traits)."""
        names = [f"t:consent_{c}" for c in ("web", "app", "email", "sms", "store", "call_center", "social")]
        pattern = f"{self.store.keys.prefix}:c:*:p"
        done = 0
        batch: list[str] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key.decode())
            if len(batch) >= 1000:
                done += await self._reindex(batch, names)
                batch = []
        if batch:
            done += await self._reindex(batch, names)
        return done

    async def _reindex(self, keys: list[str], names: list[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, ["t:segment", *names])
        traits: dict[str, dict[str, str]] = {}
        for key, values in zip(keys, await self._call(pipe.execute(), WRITE_TIMEOUT_S)):
            person = key[key.index("{") + 1: key.rindex("}")]
            got = {n[2:]: v.decode() for n, v in zip(["t:segment", *names], values) if v is not None}
            if got:
                traits[person] = got
        return await self.index_traits(traits)


# ---- in-process ----


class MemoryOfferStore:
    """The offer store beside the embedded MemoryFeatureStore. No await between a check and its write: under
    asyncio every reservation and outcome applies atomically, like the Redis scripts."""

    backend = "memory"

    def __init__(self, store: MemoryFeatureStore) -> None:
        self.store = store
        self.catalog: dict[str, Offer] = {}
        self.version = 0
        self.counts: Posteriors = {}
        self.ledgers: dict[str, list[Contact]] = {}
        self.states: dict[str, LedgerState] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self.exports: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.segment_of: dict[str, str] = {}
        self.segment_index: dict[str, list[str]] = {}  # sorted person ids
        self.consent_index: dict[str, list[str]] = {}

    async def upsert_offers(self, offers: Sequence[Offer]) -> int:
        for o in offers:
            self.catalog[o.offer_id] = decode_offer(encode_offer(o))
        self.version += 1 if offers else 0
        return len(offers)

    async def load_catalog(self) -> tuple[int, dict[str, Offer]]:
        return self.version, dict(self.catalog)

    async def delete_offer(self, offer_id: str) -> bool:
        self.version += 1
        return self.catalog.pop(offer_id, None) is not None

    async def posteriors(self, offer_ids: Sequence[str]) -> Posteriors:
        return {o: {s: list(c) for s, c in self.counts.get(o, {}).items()} for o in offer_ids}

    def _ledger(self, person: str, now: float, keep_s: float) -> LedgerState:
        contacts = [c for c in self.ledgers.get(person, []) if c.ts > now - keep_s]
        self.ledgers[person] = contacts
        st = self.states.get(person, LedgerState())
        return LedgerState(st.version, list(contacts), dict(st.accepted), dict(st.dismissed))

    async def read_customers(self, person_ids: Sequence[str], need: ReadSpec, keep_s: float,
                             now: float, resolve: bool = False) -> CustomerBatch:
        records = []
        for p in person_ids:
            if resolve:
                p = await self.store.resolve(p)
            prof = await self.store.profile(p, now)  # its affinities are the strongest 50 items, 20 categories too
            owned = {i: prof.purchased[i] for i in need.owned if i in prof.purchased} if prof is not None else {}
            records.append(CustomerRecord(p, prof, owned, self._ledger(p, now, keep_s)))
        return CustomerBatch(records, self.version)

    async def reserve(self, reservations: Sequence[Reservation], now: float, keep_s: float,
                      export_ttl_s: float) -> list[Reserved]:
        out: list[Reserved] = []
        logged: list[DecisionRecord] = []
        for r in reservations:  # no await until the log write: atomic under asyncio
            if r.export_id:
                mark = self.exports.get((r.person_id, r.export_id))
                if mark is not None and mark[1] > now:
                    out.append(Reserved("duplicate", line=mark[0]))
                    continue
            if r.contacts:
                ledger = self._ledger(r.person_id, now, keep_s)
                why = check_reservation(ledger, r, now)
                if why is not None:
                    out.append(Reserved("conflict" if why == "conflict" else "refused", reason=why, ledger=ledger))
                    continue
                self.ledgers.setdefault(r.person_id, []).extend(r.contacts)
                st = self.states.setdefault(r.person_id, LedgerState())
                st.version += 1
            logged.append(r.record)
            if r.export_id:
                self.exports[(r.person_id, r.export_id)] = (r.line or b"", now + export_ttl_s)
            out.append(Reserved("ok"))
        await self.store.log_decisions(logged)
        return out

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> list[OutcomeCount]:
        out = []
        for o in outcomes:
            marks = self.marks.setdefault(o.person_id, {})
            for m in [m for m, ts in marks.items() if ts < now - OUTCOME_KEEP]:
                del marks[m]
            if f"e{SEP}{o.event_id}" in marks:
                out.append(OutcomeCount(o.offer_id, "", 0, 0, 0))
                continue
            marks[f"e{SEP}{o.event_id}"] = now
            segment = None
            if o.decision_id:
                for c in self.ledgers.get(o.person_id, []):
                    if c.decision_id == o.decision_id and c.offer_id == o.offer_id:
                        segment = c.segment
                        break
            if segment is None:
                prof = await self.store.profile(o.person_id, now)
                segment = (prof.traits.get("segment") if prof else None) or UNKNOWN_SEGMENT
            base = f"{o.decision_id or 'ev:' + o.event_id}{SEP}{o.offer_id}"
            imp = acc = dis = 0
            if f"i{SEP}{base}" not in marks:
                marks[f"i{SEP}{base}"] = now
                imp = 1
            st = self.states.setdefault(o.person_id, LedgerState())
            if o.type == "offer_accept" and f"a{SEP}{base}" not in marks:
                marks[f"a{SEP}{base}"] = now
                acc = 1
                st.accepted.setdefault(o.offer_id, o.ts)
                st.version += 1
            elif o.type == "offer_dismiss" and f"d{SEP}{base}" not in marks:
                marks[f"d{SEP}{base}"] = now
                dis = 1
                st.dismissed[o.offer_id] = max(st.dismissed.get(o.offer_id, 0.0), o.ts)
                st.version += 1
            cell = self.counts.setdefault(o.offer_id, {}).setdefault(segment, [0, 0, 0])
            cell[0] += imp
            cell[1] += acc
            cell[2] += dis
            out.append(OutcomeCount(o.offer_id, segment, imp, acc, dis))
        return out

    async def index_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        segments, consents = _traits_changes(traits)
        for p, new in segments.items():
            before = self.segment_of.get(p)
            if before is not None and before != new:
                _remove(self.segment_index.setdefault(before, []), p)
            _insert(self.segment_index.setdefault(new, []), p)
            self.segment_of[p] = new
        for p, by_channel in consents.items():
            for channel, granted in by_channel.items():
                index = self.consent_index.setdefault(channel, [])
                (_insert if granted else _remove)(index, p)
        return len(set(segments) | set(consents))

    async def audience(self, kind: str, key: str, after: str | None, count: int) -> list[str]:
        index = (self.segment_index if kind == "segment" else self.consent_index).get(key, [])
        start = bisect.bisect_right(index, after) if after is not None else 0
        return index[start: start + count]

    async def erased(self, person_ids: Sequence[str]) -> set[str]:
        gone = await self.store.erased_ids()
        return {p for p in person_ids if p in gone}

    async def reindex(self) -> int:
        traits = {}
        for person in list(self.store.people):
            prof = await self.store.profile(person)
            if prof is not None and prof.traits:
                traits[person] = prof.traits
        return await self.index_traits(traits)


def _insert(index: list[str], p: str) -> None:
    i = bisect.bisect_left(index, p)
    if i == len(index) or index[i] != p:
        index.insert(i, p)


def _remove(index: list[str], p: str) -> None:
    i = bisect.bisect_left(index, p)
    if i < len(index) and index[i] == p:
        del index[i]


def check_reservation(ledger: LedgerState, r: Reservation, now: float) -> str | None:
    """What the reservation script checks, for the in-process store: None when the reservation may go ahead."""
    if ledger.version != r.expected_version:
        return "conflict"
    for cap in r.caps:
        used = sum(1 for c in ledger.contacts if c.ts > now - cap.window_s and cap.key in ("total", c.channel))
        used += sum(1 for c in r.contacts if cap.key in ("total", c.channel))
        if used > cap.max:
            return f"cap:{cap.key}"
    for chk in r.checks:
        if chk.offer_id in ledger.accepted:
            return f"accepted:{chk.offer_id}"
        d = ledger.dismissed.get(chk.offer_id)
        if d is not None and now - d < chk.cooldown_s:
            return f"cooldown:{chk.offer_id}"
        if chk.limit > 0:
            used = 1 + sum(1 for c in ledger.contacts if c.ts > now - chk.limit_window_s and c.offer_id == chk.offer_id)
            if used > chk.limit:
                return f"offer_limit:{chk.offer_id}"
    return None


# ---- one offer store per feature store ----

_memory: weakref.WeakKeyDictionary[MemoryFeatureStore, MemoryOfferStore] = weakref.WeakKeyDictionary()
_redis: weakref.WeakKeyDictionary[RedisFeatureStore, RedisOfferStore] = weakref.WeakKeyDictionary()


def offer_store_for(store: FeatureStore) -> RedisOfferStore | MemoryOfferStore:
    """The offer store beside a feature store; the same object every time (the in-process one holds the state)."""
    if isinstance(store, RedisFeatureStore):
        if store not in _redis:
            _redis[store] = RedisOfferStore(store)
        return _redis[store]
    if isinstance(store, MemoryFeatureStore):
        if store not in _memory:
            _memory[store] = MemoryOfferStore(store)
        return _memory[store]
    raise TypeError(f"no offer store for a {type(store).__name__}")


async def publish_and_index(store: FeatureStore, traits: Mapping[str, Mapping[str, str]], chunk: int = 1000) -> int:
    """`features.traits.publish_traits`, then the audience indexes (segment, consent) the offer export reads. The
    segments publisher should call this instead of publish_traits so exports by segment see new members."""
    n = await publish_traits(store, traits, chunk)
    gone = await store.erased_ids()
    await offer_store_for(store).index_traits({p: v for p, v in traits.items() if p not in gone})
    return n
