"""The in-process adapter of the FeatureStore port: the embedded default of the local demo.

Same semantics as the Redis store (dedupe, identity link and merge, decay, caps, offline log with pending entries),
checked by the same contract tests, one of which compares both adapters' profiles, popularity and logs for one
random event stream. Not shared between processes, not persisted: `remember_events` gives a new process the event
ids an earlier one put in the offline log. Differences, all invisible in profiles below the caps: no TTLs (the dedupe
set and people are kept for the life of the process; a session counts as expired once its last event is SESSION_TTL
old; a country's popularity once COUNTRY_POP_TTL passed without a write; trending hours older than TRENDING_KEEP are
dropped), and caps are enforced at once (Redis trims every 16th event of a person, overshooting by at most 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from features import keys as K
from features.schema import (
    LIVE_CATEGORIES,
    LIVE_RECENT_SCAN,
    LiveFeatures,
    DecisionRecord,
    Event,
    IngestResult,
    Item,
    LinkRecord,
    LogRecord,
    Profile,
    RecentEvent,
    Session,
    event_identifiers,
    normalize,
    session_items,
    to_log_record,
)
from features.redis_store import (
    PROFILE_AFFINITIES,
    PROFILE_CATEGORIES,
    PROFILE_RECENT,
    check_count,
    check_popular_args,
    top_k,
    trending_hours,
    trending_weight,
)
from features.clock import Clock, wall_clock
from features.store import LogEntry, Window


@dataclass
class _Person:
    hash: dict[str, float | str] = field(default_factory=dict)
    recent: list[RecentEvent] = field(default_factory=list)  # newest first
    ia: dict[str, float] = field(default_factory=dict)
    ca: dict[str, float] = field(default_factory=dict)
    bought: dict[str, float] = field(default_factory=dict)
    returned: dict[str, float] = field(default_factory=dict)
    cart: dict[str, int] = field(default_factory=dict)
    session: dict[str, float | str] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)


def _trim(z: dict[str, float], cap: int) -> None:
    if len(z) > cap:
        for member, _ in sorted(z.items(), key=lambda kv: (kv[1], kv[0]))[: len(z) - cap]:
            del z[member]


class MemoryFeatureStore:
    backend = "memory"

    def __init__(self, clock: Clock = wall_clock) -> None:
        self.clock = clock
        self.people: dict[str, _Person] = {}
        self.aliases: dict[str, str] = {}
        self.items: dict[str, Item] = {}
        self._catalog_version = 0
        self.item_stats: dict[str, dict[str, int]] = {}
        self.pop: dict[str, dict[str, float]] = {}
        self.trend: dict[tuple[str, int], dict[str, float]] = {}
        self.seen: set[str] = set()
        self.countries: dict[str, float] = {}  # the registry of `co:` popularity scopes: country -> last write
        self.erased: set[str] = set()
        self._log: dict[str, LogRecord | LinkRecord | DecisionRecord] = {}  # entry id -> record, until acknowledged
        self._order: list[str] = []  # every entry id in append order
        self._seq = 0
        self._cursors: dict[str, int] = {}  # group -> index into _order of the next undelivered entry
        self._pending: dict[tuple[str, str], dict[str, LogRecord | LinkRecord | DecisionRecord]] = {}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # ---- writes ----

    def _append_log(self, rec: LogRecord | LinkRecord | DecisionRecord, now: float) -> None:
        self._seq += 1
        entry_id = f"{int(now * 1000)}-{self._seq}"
        self._log[entry_id] = rec
        self._order.append(entry_id)

    def _person(self, pid: str) -> _Person:
        p = self.people.get(pid)
        if p is None:
            p = self.people[pid] = _Person()
        return p

    def _link(self, alias: str, person: str, ts: float, now: float, previous: str | None = None) -> None:
        self.aliases[alias] = person
        if previous is not None and previous != person and previous in self.people:
            self.people[previous].ids.discard(alias)
        self._person(person).ids.add(alias)
        self._append_log(LinkRecord(alias=alias, person_id=person, ts=ts), now)

    def _merge(self, old: str, new: str, ts: float, now: float) -> None:
        """Anonymous person `old` into `new`, as the Lua script's merge() does; old's aliases now point to new."""
        o, n = self.people.pop(old), self._person(new)
        new_last = n.hash.get("last")
        for f, v in o.hash.items():
            if f == "first":
                n.hash[f] = min(float(n.hash.get(f, v)), float(v))
            elif f == "last" or f.startswith("ls:"):
                n.hash[f] = max(float(n.hash.get(f, v)), float(v))
            elif f in ("n", "orders", "monetary") or f.startswith("cnt:"):
                n.hash[f] = float(n.hash.get(f, 0)) + float(v)
            elif f not in ("anon", "country"):
                n.hash.setdefault(f, v)  # traits: the customer's own value wins
        if "country" in o.hash and (
            new_last is None or float(o.hash.get("last", 0)) > float(new_last) or "country" not in n.hash
        ):
            n.hash["country"] = o.hash["country"]
        n.recent = sorted(n.recent + o.recent, key=lambda r: -r.ts)[: K.RECENT_CAP]  # stable: ties keep new first
        for mine, theirs, cap in ((n.ia, o.ia, K.ITEM_AFF_CAP), (n.ca, o.ca, K.CAT_AFF_CAP)):
            for m, s in theirs.items():
                mine[m] = mine.get(m, 0.0) + s
            _trim(mine, cap)
        for mine, theirs in ((n.bought, o.bought), (n.returned, o.returned)):
            for m, s in theirs.items():
                mine[m] = max(mine.get(m, s), s)
        for m, q in o.cart.items():
            n.cart[m] = n.cart.get(m, 0) + q
        if not n.session and o.session:
            n.session = o.session
        n.ids |= o.ids
        for alias in [old, *sorted(o.ids)]:
            self._link(alias, new, ts, now)

    def _resolve_for_write(self, aliases: list[str], customer: str | None, ts: float, now: float) -> tuple[str, bool]:
        if customer:
            for alias in aliases:
                if alias.startswith("customer:"):
                    continue
                cur = self.aliases.get(alias)
                if cur != customer:
                    anon = cur or alias
                    if anon != customer and anon in self.people and self.people[anon].hash.get("anon") == "1":
                        self._merge(anon, customer, ts, now)
                    else:
                        self._link(alias, customer, ts, now, previous=cur)
            return customer, False
        person = next((self.aliases[a] for a in aliases if a in self.aliases), None)
        fresh = person is None
        if person is None:
            person = aliases[0]
        for alias in aliases:
            if alias != person and alias not in self.aliases:
                self._link(alias, person, ts, now)
        return person, fresh

    def remember_events(self, event_ids: Iterable[str]) -> int:
        """Count these events as already ingested: a replay of one is a duplicate. The embedded store forgets
        everything when its process ends; `recsvc import` hands it the event ids earlier runs put in the offline log,
        as Redis keeps its dedupe markers, so importing a file twice changes nothing there either."""
        before = len(self.seen)
        self.seen.update(event_ids)
        return len(self.seen) - before

    async def ingest(self, events: Sequence[Event], now: float | None = None) -> IngestResult:
        now = self.clock() if now is None else now
        dups: list[str] = []
        # no await inside: under asyncio the whole batch applies atomically, like the Redis script
        for event in events:
            normalize(event, now)
            assert event.event_id is not None
            if event.event_id in self.seen:
                dups.append(event.event_id)
                continue
            self.seen.add(event.event_id)
            self._apply(event, now)
        return IngestResult(accepted=len(events) - len(dups), duplicates=len(dups), duplicate_ids=dups)

    def _apply(self, e: Event, now: float) -> None:
        ts, item, country = e.ts, e.item_id, e.country
        person, anonymous = self._resolve_for_write(event_identifiers(e), e.customer_id, ts, now)
        p = self._person(person)
        h = p.hash
        if anonymous:
            h.setdefault("anon", "1")
        for f in ("n", f"cnt:type:{e.type}", f"cnt:channel:{e.channel}"):
            h[f] = float(h.get(f, 0)) + 1
        if "first" not in h or ts < float(h["first"]):
            h["first"] = ts
        if "last" not in h or ts >= float(h["last"]):
            h["last"] = ts
            if country:
                h["country"] = country
        ls = f"ls:{e.channel}"
        if ls not in h or ts > float(h[ls]):
            h[ls] = ts
        if e.type == "purchase":
            h["orders"] = float(h.get("orders", 0)) + 1
            h["monetary"] = float(h.get("monetary", 0)) + (e.value or 0.0)
        elif e.type == "return" and e.value:
            h["monetary"] = float(h.get("monetary", 0)) - abs(e.value)
        p.recent.insert(
            0,
            RecentEvent(
                type=e.type, channel=e.channel, ts=ts, item_id=item, offer_id=e.offer_id,
                content_id=e.content_id, decision_id=e.decision_id,
            ),
        )
        del p.recent[K.RECENT_CAP :]
        if item:
            aw = K.AFFINITY_WEIGHTS.get(e.type)
            if aw is not None:
                inc = aw * K.decay_factor(K.AFFINITY_HALF_LIFE, ts)
                p.ia[item] = p.ia.get(item, 0.0) + inc
                _trim(p.ia, K.ITEM_AFF_CAP)
                cats = self.items[item].categories if item in self.items else []
                for cat in cats:
                    p.ca[cat] = p.ca.get(cat, 0.0) + inc
                if cats:
                    _trim(p.ca, K.CAT_AFF_CAP)
            if e.type == "purchase":
                p.bought[item] = max(p.bought.get(item, ts), ts)
                _trim(p.bought, K.PURCHASED_CAP)
                p.cart.pop(item, None)
            elif e.type == "return":
                p.returned[item] = max(p.returned.get(item, ts), ts)
                _trim(p.returned, K.RETURNED_CAP)
            elif e.type in ("add_to_cart", "remove_from_cart"):
                q = abs(e.quantity or 0) or 1
                q = -q if e.type == "remove_from_cart" else q
                left = p.cart.get(item, 0) + q
                if left <= 0:
                    p.cart.pop(item, None)
                else:
                    p.cart[item] = left
            pw = K.POPULARITY_WEIGHTS.get(e.type)
            if pw is not None:
                inc = pw * K.decay_factor(K.POPULAR_HALF_LIFE, ts)
                hour = int(ts // K.HOUR)
                live = (hour + 1) * K.HOUR + K.TRENDING_KEEP > now
                scopes = ["all", f"ch:{e.channel}"]
                if country and self._admit_country(country, now):
                    scopes.append(f"co:{country}")
                for scope in scopes:
                    z = self.pop.setdefault(scope, {})
                    z[item] = z.get(item, 0.0) + inc
                    if len(z) > K.POPULAR_CAP * 1.1:
                        _trim(z, K.POPULAR_CAP)
                    if live:
                        if (scope, hour) not in self.trend:
                            self._prune_trending(now)
                        t = self.trend.setdefault((scope, hour), {})
                        t[item] = t.get(item, 0.0) + pw
                stats = self.item_stats.setdefault(item, {})
                stats[e.type] = stats.get(e.type, 0) + 1
        if ts >= now - K.SESSION_TTL:  # live events only; never moved backwards (as in the Lua script)
            s = p.session
            if s and float(s["last"]) < now - K.SESSION_TTL:
                s = {}  # what the Redis key's TTL would have expired
            new_session = {"id": e.session_id or e.event_id or "", "started": ts, "last": ts}
            if not s:
                p.session = new_session
            elif ts >= float(s["last"]):
                if (e.session_id and e.session_id != s["id"]) or ts - float(s["last"]) > K.SESSION_TTL:
                    p.session = new_session
                else:
                    s["last"] = ts
        self._append_log(to_log_record(e, person, now), now)

    def _admit_country(self, country: str, now: float) -> bool:
        """Whether this country's popularity is kept (the registry rules in features/keys.py, as ingest.lua)."""
        last = self.countries.get(country)
        if last is None or last < now - K.COUNTRY_POP_TTL:
            for stale in [c for c, t in self.countries.items() if t < now - K.COUNTRY_POP_TTL]:
                del self.countries[stale]
                self.pop.pop(f"co:{stale}", None)  # what the key's TTL would have expired
            if len(self.countries) >= K.COUNTRY_SCOPES_CAP:
                return False
        self.countries[country] = now
        return True

    def _prune_trending(self, now: float) -> None:
        """Drop the hourly buckets no read can reach any more (Redis expires them)."""
        oldest = trending_hours(now).start
        for key in [key for key in self.trend if key[1] < oldest]:
            del self.trend[key]

    async def upsert_items(self, items: Sequence[Item]) -> int:
        for item in items:
            self.items[item.item_id] = item
        self._catalog_version += 1
        return len(items)

    async def catalog_version(self) -> int:
        return self._catalog_version

    async def set_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        for person, values in traits.items():
            h = self._person(person).hash
            for k, v in values.items():
                h[f"t:{k}"] = str(v)
        return len(traits)

    async def erase(self, customer_id: str) -> bool:
        person = await self.resolve(customer_id)
        p = self.people.pop(person, None)
        if p is not None:
            for alias in p.ids:
                self.aliases.pop(alias, None)
        self.erased |= {person, customer_id}
        return p is not None

    async def erased_ids(self) -> set[str]:
        return set(self.erased)

    # ---- reads ----

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        return {i: self.items[i] for i in item_ids if i in self.items}

    async def item_ids(self) -> list[str]:
        return sorted(self.items)

    async def resolve(self, any_id: str) -> str:
        """As RedisFeatureStore.resolve: a qualified id ("anonymous:abc") only as that alias, a bare one first as a
        person (a customer), then as an alias value, then as an anonymous person never linked."""
        if K.qualified_alias(any_id) is not None:
            return self.aliases.get(any_id, any_id)
        if any_id in self.people:
            return any_id
        for kind in K.ALIAS_KINDS[1:]:
            if f"{kind}:{any_id}" in self.aliases:
                return self.aliases[f"{kind}:{any_id}"]
        for kind in K.ALIAS_KINDS[1:]:
            if K.anonymous_person(kind, any_id) in self.people:
                return K.anonymous_person(kind, any_id)
        return any_id

    async def profile(self, any_id: str, now: float | None = None) -> Profile | None:
        now = self.clock() if now is None else now
        person = await self.resolve(any_id)
        p = self.people.get(person)
        if p is None or not p.hash:
            return None
        h = p.hash
        fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
        recent = sorted(p.recent[:PROFILE_RECENT], key=lambda r: -r.ts)  # as build_profile does
        session = None
        if p.session and K.session_open(float(p.session.get("last", 0)), now):
            session = Session(
                session_id=str(p.session["id"]), started=float(p.session["started"]),
                last=float(p.session["last"]), items=session_items(recent, float(p.session["started"])),
            )
        return Profile(
            customer_id=person,
            linked_ids=sorted(p.ids),
            first_seen=float(h["first"]) if "first" in h else None,
            last_seen=float(h["last"]) if "last" in h else None,
            country=str(h["country"]) if "country" in h else None,
            counts={f[4:]: int(float(v)) for f, v in h.items() if f.startswith("cnt:")},
            last_seen_by_channel={f[3:]: float(v) for f, v in h.items() if f.startswith("ls:")},
            recent=recent,
            item_affinity=[(i, s * fa) for i, s in top_k(p.ia, PROFILE_AFFINITIES)],
            category_affinity=[(c, s * fa) for c, s in top_k(p.ca, PROFILE_CATEGORIES)],
            purchased=dict(p.bought),
            returned=dict(p.returned),
            cart=dict(p.cart),
            session=session,
            monetary=float(h.get("monetary", 0.0)),
            orders=int(float(h.get("orders", 0))),
            traits={f[2:]: str(v) for f, v in h.items() if f.startswith("t:")},
        )

    async def live(self, any_id: str, since: float, now: float | None = None) -> LiveFeatures | None:
        now = self.clock() if now is None else now
        person = await self.resolve(any_id)
        p = self.people.get(person)
        if p is None or not p.hash:
            return None
        h = p.hash
        session_ids: list[str] = []
        if p.session and K.session_open(float(p.session.get("last", 0)), now):
            recent = sorted(p.recent[:LIVE_RECENT_SCAN], key=lambda r: -r.ts)
            session_ids = session_items(recent, float(p.session["started"]))
        fa = K.read_factor(K.AFFINITY_HALF_LIFE, now)
        bought = top_k(p.bought, len(p.bought))
        return LiveFeatures(
            person=person,
            country=str(h["country"]) if "country" in h else None,
            orders=int(float(h.get("orders", 0))),
            events=int(float(h.get("n", 0))),
            traits={f[2:]: str(v) for f, v in h.items() if f.startswith("t:")},
            purchased=[i for i, _ in bought],
            purchased_since={i: ts for i, ts in bought if ts >= since},
            returned=sorted(p.returned),
            cart=list(p.cart),
            session_items=session_ids,
            category_affinity=[(c, s * fa) for c, s in top_k(p.ca, LIVE_CATEGORIES)],
        )

    async def popular(
        self, scope: str = "all", window: Window = "pop", k: int = 100, now: float | None = None
    ) -> list[tuple[str, float]]:
        check_popular_args(window, k)
        now = self.clock() if now is None else now
        if window == "pop":
            if scope.startswith("co:") and self.countries.get(scope[3:], now) < now - K.COUNTRY_POP_TTL:
                return []  # what the key's TTL would have expired
            f = K.read_factor(K.POPULAR_HALF_LIFE, now)
            return [(i, s * f) for i, s in top_k(self.pop.get(scope, {}), k)]
        scores: dict[str, float] = {}
        for h in trending_hours(now):
            w = trending_weight(h, now)
            for item, s in self.trend.get((scope, h), {}).items():
                scores[item] = scores.get(item, 0.0) + s * w
        return top_k(scores, k)

    # ---- the offline log ----

    async def log_decisions(self, records: Sequence[DecisionRecord]) -> int:
        for rec in records:
            self._append_log(rec, rec.ts)
        return len(records)

    async def log_read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[LogEntry]:
        check_count(count)
        cursor = self._cursors.get(group, 0)
        fresh: list[LogEntry] = []
        while cursor < len(self._order) and len(fresh) < count:
            entry_id = self._order[cursor]
            cursor += 1
            if entry_id in self._log:
                fresh.append((entry_id, self._log[entry_id]))
        self._cursors[group] = cursor
        if fresh:
            self._pending.setdefault((group, consumer), {}).update(dict(fresh))
        return fresh

    async def log_pending(self, group: str, consumer: str, count: int) -> list[LogEntry]:
        check_count(count)
        pend = self._pending.get((group, consumer), {})
        return sorted(pend.items(), key=lambda kv: _seq(kv[0]))[:count]

    async def log_ack(self, group: str, entry_ids: Sequence[str]) -> int:
        done = set(entry_ids)
        acked = 0
        for (g, _c), pend in self._pending.items():
            if g == group:
                for i in done & pend.keys():
                    del pend[i]
                    acked += 1
        for entry_id in done:
            self._log.pop(entry_id, None)
        return acked

    async def log_length(self) -> int:
        return len(self._log)


def _seq(entry_id: str) -> int:
    """Entry ids are `ms-seq` like Redis's; seq alone orders them (callers may pass any `now`)."""
    return int(entry_id.partition("-")[2])
