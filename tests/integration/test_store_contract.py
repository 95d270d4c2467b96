"""One contract suite for every FeatureStore adapter: the Redis run talks to a real server."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as syncredis

from features import keys as K
from features.keys import Keys
from features.memory_store import MemoryFeatureStore
from features import redis_store as store_module
from features.redis_store import RedisFeatureStore
from features.schema import LiveFeatures, Profile, Event, EventContext, Item, LinkRecord, LogRecord, decode_log_record
from features.store import FeatureStore, StoreUnavailable

NOW = time.time()


def ev(type_: str = "view", item: str | None = "A", ts: float | None = None, **kw: object) -> Event:
    kw.setdefault("customer_id", "c1")
    return Event(
        type=type_,  # type: ignore[arg-type]
        channel=kw.pop("channel", "web"),  # type: ignore[arg-type]
        item_id=item,
        timestamp=datetime.fromtimestamp(ts if ts is not None else NOW - 5, tz=timezone.utc),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FeatureStore]:
    if request.param == "memory":
        yield MemoryFeatureStore()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    s = RedisFeatureStore.from_url(url, prefix=prefix, max_connections=8, timeout_s=2.0)
    yield s
    await s.close()


async def test_profile_counts_recent_and_planted_affinity(store: FeatureStore) -> None:
    await store.upsert_items([Item(item_id="A", categories=["mugs"]), Item(item_id="B", categories=["bags"])])
    events = [ev("view", "A", NOW - 50), ev("view", "B", NOW - 40), ev("add_to_cart", "A", NOW - 30)]
    events.append(ev("purchase", "A", NOW - 20, value=9.5, quantity=1, context=EventContext(country="UK")))
    res = await store.ingest(events, now=NOW)
    assert (res.accepted, res.duplicates) == (4, 0)
    p = await store.profile("c1", now=NOW)
    assert p is not None
    assert p.customer_id == "c1" and p.country == "UK"
    assert p.counts["type:view"] == 2 and p.counts["type:purchase"] == 1 and p.counts["channel:web"] == 4
    assert [r.type for r in p.recent] == ["purchase", "add_to_cart", "view", "view"]
    # A: view 1 + cart 3 + purchase 5 = 9 beats B: view 1 (decay over seconds is negligible)
    assert [i for i, _ in p.item_affinity] == ["A", "B"]
    assert p.item_affinity[0][1] == pytest.approx(9.0, rel=1e-3)
    assert [c for c, _ in p.category_affinity] == ["mugs", "bags"]
    assert set(p.purchased) == {"A"} and p.cart == {}  # bought, so out of the cart
    assert p.orders == 1 and p.monetary == pytest.approx(9.5)
    assert p.session is not None and p.session.items[:2] == ["A", "B"]
    assert await store.profile("nobody", now=NOW) is None


async def test_replayed_event_counts_once_everywhere(store: FeatureStore) -> None:
    first = await store.ingest([ev("purchase", "A", event_id="e-1"), ev("purchase", "A", event_id="e-1")], now=NOW)
    assert (first.accepted, first.duplicates, first.duplicate_ids) == (1, 1, ["e-1"])
    again = await store.ingest([ev("purchase", "A", event_id="e-1")], now=NOW)
    assert (again.accepted, again.duplicates) == (0, 1)
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.counts["type:purchase"] == 1 and p.orders == 1
    assert [i for i, _ in await store.popular("all", now=NOW)] == ["A"]
    assert await store.log_length() == 1


async def test_login_links_and_merges_anonymous_history(store: FeatureStore) -> None:
    await store.ingest(
        [ev("view", "A", NOW - 30, customer_id=None, anonymous_id="cookie-1"),
         ev("add_to_cart", "B", NOW - 20, customer_id=None, anonymous_id="cookie-1", quantity=2)],
        now=NOW,
    )
    anon = await store.profile("cookie-1", now=NOW)
    assert anon is not None and anon.customer_id == "anonymous:cookie-1" and anon.cart == {"B": 2}
    await store.ingest([ev("email_click", None, NOW - 10, customer_id="c9", anonymous_id="cookie-1")], now=NOW)
    by_customer = await store.profile("c9", now=NOW)
    by_cookie = await store.profile("cookie-1", now=NOW)
    assert by_customer is not None and by_cookie is not None
    assert by_customer.customer_id == by_cookie.customer_id == "c9"
    assert by_customer.counts["type:view"] == 1 and by_customer.cart == {"B": 2}
    assert by_customer.linked_ids == ["anonymous:cookie-1"]
    assert [r.type for r in by_customer.recent] == ["email_click", "add_to_cart", "view"]
    # later anonymous events of that cookie land on the customer
    await store.ingest([ev("view", "C", NOW - 5, customer_id=None, anonymous_id="cookie-1")], now=NOW)
    p = await store.profile("c9", now=NOW)
    assert p is not None and p.counts["type:view"] == 2
    links = [r for _, r in await store.log_read("g", "c", 100) if isinstance(r, LinkRecord)]
    assert [(lk.alias, lk.person_id) for lk in links] == [("anonymous:cookie-1", "c9")]


async def test_caps_bound_memory(store: FeatureStore) -> None:
    n = max(K.RECENT_CAP, K.ITEM_AFF_CAP) + 20
    await store.ingest([ev("view", f"I{i}", NOW - 1000 + i) for i in range(n)], now=NOW)
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.counts["type:view"] == n
    assert len(p.recent) == 50  # the profile shows the newest 50 of RECENT_CAP kept
    assert p.recent[0].item_id == f"I{n - 1}"


async def test_old_events_weigh_less(store: FeatureStore) -> None:
    await store.ingest([ev("view", "OLD", NOW - 90 * K.DAY), ev("view", "NEW", NOW - 60)], now=NOW)
    p = await store.profile("c1", now=NOW)
    assert p is not None
    aff = dict(p.item_affinity)
    assert aff["OLD"] == pytest.approx(0.125, rel=1e-3)  # three half-lives of 30 days
    assert aff["NEW"] == pytest.approx(1.0, rel=1e-3)


async def test_cart_rules_and_returns(store: FeatureStore) -> None:
    await store.ingest(
        [ev("add_to_cart", "A", NOW - 9, quantity=3), ev("remove_from_cart", "A", NOW - 8, quantity=1),
         ev("add_to_cart", "B", NOW - 7), ev("remove_from_cart", "B", NOW - 6),
         ev("return", "Z", NOW - 5, value=4.0, quantity=1)],
        now=NOW,
    )
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.cart == {"A": 2} and set(p.returned) == {"Z"}
    assert p.monetary == pytest.approx(-4.0)


async def test_popularity_per_scope_and_trending(store: FeatureStore) -> None:
    uk = EventContext(country="UK")
    events = [ev("purchase", "UKHIT", NOW - 10, customer_id=f"u{i}", context=uk) for i in range(3)]
    events += [ev("view", "FRHIT", NOW - 10, customer_id=f"f{i}", context=EventContext(country="FR")) for i in range(5)]
    events += [ev("purchase", "ANCIENT", NOW - 400 * K.DAY, customer_id="old", channel="store")]
    await store.ingest(events, now=NOW)
    assert [i for i, _ in await store.popular("co:UK", now=NOW)] == ["UKHIT"]
    assert [i for i, _ in await store.popular("all", now=NOW)][:2] == ["UKHIT", "FRHIT"]  # 3x4 > 5x1
    assert [i for i, _ in await store.popular("ch:store", now=NOW)] == ["ANCIENT"]
    trending = [i for i, _ in await store.popular("all", "trend", now=NOW)]
    assert trending == ["UKHIT", "FRHIT"]  # the 400-day-old purchase is not trending


async def test_traits_erase_and_unicode(store: FeatureStore) -> None:
    title = "白色心形挂灯 🕯️ T-LIGHT"
    who = "顾客😀" * 4  # longer than a msgpack fixstr
    await store.upsert_items([Item(item_id="杯子-1", title=title, categories=["家居", "灯🕯️"])])
    await store.ingest([ev("view", "杯子-1", customer_id=who, anonymous_id="anon-x", channel="app")], now=NOW)
    assert (await store.get_items(["杯子-1", "missing"])) == {
        "杯子-1": Item(item_id="杯子-1", title=title, categories=["家居", "灯🕯️"])
    }
    assert await store.item_ids() == ["杯子-1"]
    await store.set_traits({who: {"segment": "champions", "churn_risk": "0.1"}})
    p = await store.profile(who, now=NOW)
    assert p is not None and p.traits == {"segment": "champions", "churn_risk": "0.1"}
    assert sorted(c for c, _ in p.category_affinity) == ["家居", "灯🕯️"]
    assert p.recent[0].item_id == "杯子-1" and p.linked_ids == ["anonymous:anon-x"]
    link, rec = [r for _, r in await store.log_read("g", "w", 10)]
    assert link == LinkRecord(alias="anonymous:anon-x", person_id=who, ts=pytest.approx(NOW - 5))
    assert isinstance(rec, LogRecord) and rec.person_id == who and rec.item_id == "杯子-1"
    assert await store.erase(who)
    assert await store.profile(who, now=NOW) is None
    assert await store.profile("anon-x", now=NOW) is None
    assert who in await store.erased_ids()
    assert not await store.erase("never-seen")


async def test_log_read_pending_ack(store: FeatureStore) -> None:
    await store.ingest([ev("view", f"I{i}", event_id=f"e{i}") for i in range(5)], now=NOW)
    got = await store.log_read("g", "w1", 3)
    assert [r.event_id for _, r in got if isinstance(r, LogRecord)] == ["e0", "e1", "e2"]
    assert all(isinstance(r, LogRecord) and r.person_id == "c1" for _, r in got)
    assert [i for i, _ in await store.log_pending("g", "w1", 10)] == [i for i, _ in got]
    rest = await store.log_read("g", "w1", 10)
    assert len(rest) == 2
    assert await store.log_ack("g", [i for i, _ in got]) == 3
    assert len(await store.log_pending("g", "w1", 10)) == 2
    assert await store.log_length() == 2


async def test_redis_keys_are_exactly_the_layout_and_carry_their_ttls(redis_url: str, redis_prefix: str) -> None:
    """The script's key names equal Keys(...) names, key for key, and every bounded key has its TTL."""
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    await s.upsert_items([Item(item_id="A", categories=["mugs", "kitchen"])])
    uk = EventContext(country="UK")
    await s.ingest([ev("add_to_cart", "A", NOW - 5, customer_id=None, anonymous_id="ck", event_id="e1", context=uk),
                    ev("purchase", "A", NOW - 4, anonymous_id="ck", event_id="e2", context=uk),
                    ev("return", "A", NOW - 3, event_id="e3", value=2.0),
                    ev("add_to_cart", "B", NOW - 2, event_id="e4", channel="app")], now=NOW)
    await s.close()
    k = Keys(redis_prefix)
    hour = int((NOW - 5) // K.HOUR)
    ttl_of = {k.person("c1", part): K.PERSON_TTL for part in ("p", "r", "ia", "ca", "b", "rt", "ids")}
    ttl_of |= {k.person("c1", "cart"): K.CART_TTL}  # the session is fields of the person hash
    ttl_of |= {k.alias("anonymous", "ck"): K.PERSON_TTL}
    ttl_of |= {k.dedupe(f"e{i}"): K.DEDUPE_TTL for i in range(1, 5)}
    ttl_of |= {k.item_stats("A"): K.ITEM_STATS_TTL, k.item_stats("B"): K.ITEM_STATS_TTL}
    trend_end = (hour + 1) * K.HOUR + K.TRENDING_KEEP - time.time()
    ttl_of |= {k.trending(scope, hour): trend_end for scope in ("all", "ch:web", "ch:app", "co:UK")}
    ttl_of |= {k.popular("co:UK"): K.COUNTRY_POP_TTL}
    no_ttl = {k.item("A"), k.catalog_index, k.catalog_version, k.log, k.country_scopes}
    no_ttl |= {k.popular(x) for x in ("all", "ch:web", "ch:app")}
    r = syncredis.Redis.from_url(redis_url)
    try:
        found = {key.decode() for key in r.scan_iter(match=f"{redis_prefix}:*", count=1000)}
        assert found == set(ttl_of) | no_ttl  # the anonymous person's keys are gone: merged into c1
        for key, ttl in ttl_of.items():
            assert ttl - 5 <= r.ttl(key) <= ttl + 1, key
        for key in no_ttl:
            assert r.ttl(key) == -1, key
        session = r.hmget(k.person("c1", "p"), "s:id", "s:started", "s:last")
        assert session[0] == b"e1" and float(session[1]) == pytest.approx(NOW - 5)  # merged with the visitor's
        assert float(session[2]) == pytest.approx(NOW - 2)
    finally:
        r.close()


async def test_stream_entries_are_the_shared_format(redis_url: str, redis_prefix: str) -> None:
    """Fields exactly k and d; d is encode_log_record(LogRecord) with the resolved person, however long its id."""
    person = "顾客😀" * 4  # 52 bytes of UTF-8: a msgpack str8, not a fixstr
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    await s.ingest([ev("view", "A", customer_id=None, anonymous_id="ck", event_id="x1"),
                    ev("view", "A", customer_id=person, anonymous_id="ck", event_id="x2", value=1.25)], now=NOW)
    await s.close()
    r = syncredis.Redis.from_url(redis_url)
    try:
        entries = r.xrange(Keys(redis_prefix).log)
    finally:
        r.close()
    assert all(set(fields) == {b"k", b"d"} for _, fields in entries)
    kinds = [fields[b"k"] for _, fields in entries]
    assert kinds == [b"e", b"l", b"e"]  # the link is logged before the event that made it
    first, last = decode_log_record(entries[0][1][b"d"]), decode_log_record(entries[2][1][b"d"])
    assert (first.event_id, first.person_id, first.anonymous_id) == ("x1", "anonymous:ck", "ck")
    assert (last.event_id, last.person_id, last.customer_id, last.value) == ("x2", person, person, 1.25)
    assert last.ingested_at == NOW and last.ts == pytest.approx(NOW - 5)


def test_lua_script_ships_with_the_package() -> None:
    import features

    assert (Path(features.__file__).parent / "lua" / "ingest.lua").is_file()


async def test_concurrent_small_ingests_each_get_their_own_answer(store: FeatureStore) -> None:
    """Small concurrent requests may share one script call (group commit); answers must still be per request."""
    import asyncio

    reqs = [[ev("view", f"I{i}", event_id=f"g{i % 5}")] for i in range(20)]  # 5 distinct ids, each sent 4 times
    results = await asyncio.gather(*[store.ingest(r) for r in reqs])
    assert sum(r.accepted for r in results) == 5
    assert sum(r.duplicates for r in results) == 15
    assert all(r.accepted + r.duplicates == 1 for r in results)
    assert all(r.duplicate_ids == [q[0].event_id] for r, q in zip(results, reqs) if r.duplicates)
    p = await store.profile("c1")
    assert p is not None and p.counts["type:view"] == 5


async def test_merge_repoints_every_alias_of_the_anonymous_person(store: FeatureStore) -> None:
    # a visitor known by a cookie and a device; the login event carries only the device
    await store.ingest([ev("view", "A", NOW - 30, customer_id=None, anonymous_id="ck", device_id="dev")], now=NOW)
    await store.ingest([ev("view", "B", NOW - 20, customer_id="c1", device_id="dev")], now=NOW)
    for any_id in ("c1", "ck", "dev"):
        p = await store.profile(any_id, now=NOW)
        assert p is not None and p.customer_id == "c1" and p.counts["type:view"] == 2, any_id
    await store.ingest([ev("view", "C", NOW - 10, customer_id=None, anonymous_id="ck")], now=NOW)
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.counts["type:view"] == 3
    assert p.linked_ids == ["anonymous:ck", "device:dev"]
    links = [(r.alias, r.person_id) for _, r in await store.log_read("g", "w", 100) if isinstance(r, LinkRecord)]
    assert links == [("device:dev", "anonymous:ck"), ("anonymous:ck", "c1"), ("device:dev", "c1")]


async def test_shared_device_follows_the_last_login(store: FeatureStore) -> None:
    await store.ingest([ev("view", "A", NOW - 30, customer_id="alice", device_id="tablet")], now=NOW)
    await store.ingest([ev("view", "B", NOW - 20, customer_id="bob", device_id="tablet")], now=NOW)
    await store.ingest([ev("view", "C", NOW - 10, customer_id=None, device_id="tablet")], now=NOW)
    alice, bob = await store.profile("alice", now=NOW), await store.profile("bob", now=NOW)
    assert alice is not None and bob is not None
    assert [r.item_id for r in alice.recent] == ["A"]  # her past stays hers
    assert [r.item_id for r in bob.recent] == ["C", "B"]  # later anonymous use goes to the last login
    assert alice.linked_ids == [] and bob.linked_ids == ["device:tablet"]
    assert await store.erase("alice")  # erasing alice must not cut bob's device link
    bob_again = await store.profile("tablet", now=NOW)
    assert bob_again is not None and bob_again.customer_id == "bob"


async def test_late_and_imported_events_count_but_never_move_state_backwards(store: FeatureStore) -> None:
    await store.ingest([ev("view", "A", NOW - 60, context=EventContext(country="FR", session_id="s2"))], now=NOW)
    await store.ingest(
        [ev("view", "OLD", NOW - 50 * K.DAY, context=EventContext(country="DE")),
         ev("purchase", "B", NOW - 90, channel="app", value=5.0, context=EventContext(country="UK", session_id="s1"))],
        now=NOW,
    )
    p = await store.profile("c1", now=NOW)
    assert p is not None
    assert p.counts["type:view"] == 2 and p.orders == 1 and p.monetary == pytest.approx(5.0)
    assert p.first_seen == pytest.approx(NOW - 50 * K.DAY) and p.last_seen == pytest.approx(NOW - 60)
    assert p.country == "FR"  # the latest event's, not a late one's
    assert p.last_seen_by_channel == pytest.approx({"web": NOW - 60, "app": NOW - 90})
    assert p.session is not None and p.session.session_id == "s2"  # the late s1 event does not reopen s1
    assert [r.item_id for r in p.recent] == ["A", "B", "OLD"]


async def test_session_rules(store: FeatureStore) -> None:
    t0 = NOW - 3 * K.SESSION_TTL
    # same session while events keep coming within SESSION_TTL of each other
    await store.ingest([ev("view", "A", t0), ev("view", "B", t0 + K.SESSION_TTL - 10)], now=t0 + K.SESSION_TTL - 5)
    p = await store.profile("c1", now=t0 + K.SESSION_TTL - 5)
    assert p is not None and p.session is not None
    assert (p.session.started, p.session.items) == (pytest.approx(t0), ["B", "A"])
    first_id = p.session.session_id
    # a gap longer than SESSION_TTL starts a new session (named after the event that starts it)
    t1 = t0 + 2 * K.SESSION_TTL + 5
    await store.ingest([ev("view", "C", t1, event_id="starts-s")], now=t1)
    p = await store.profile("c1", now=t1)
    assert p is not None and p.session is not None
    assert p.session.session_id == "starts-s" != first_id and p.session.items == ["C"]
    # a client session id that changes starts a new session too
    await store.ingest([ev("view", "D", t1 + 1, context=EventContext(session_id="tab-2"))], now=t1 + 1)
    p = await store.profile("c1", now=t1 + 1)
    assert p is not None and p.session is not None
    assert (p.session.session_id, p.session.items) == ("tab-2", ["D"])


async def test_caps_keep_the_strongest_affinities(store: FeatureStore) -> None:
    fav = [ev("purchase", "FAV", NOW - 3000 + i) for i in range(3)]
    noise = [ev("view", f"N{i:03d}", NOW - 2000 + i) for i in range(K.ITEM_AFF_CAP + 40)]
    await store.ingest(fav + noise[:150], now=NOW)
    await store.ingest(noise[150:], now=NOW)
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.item_affinity[0] == ("FAV", pytest.approx(15.0, rel=1e-3))
    assert p.purchased == {"FAV": pytest.approx(NOW - 2998)}
    assert [r.item_id for r in p.recent[:2]] == [f"N{K.ITEM_AFF_CAP + 39:03d}", f"N{K.ITEM_AFF_CAP + 38:03d}"]
    ia, recent = await raw_sizes(store, "c1")
    assert K.ITEM_AFF_CAP <= ia <= K.ITEM_AFF_CAP + 15  # trimmed every 16th event of the person
    assert K.RECENT_CAP <= recent <= K.RECENT_CAP + 15


async def raw_sizes(store: FeatureStore, person: str) -> tuple[int, int]:
    """(item-affinity entries, recent entries) as stored, whatever the adapter."""
    if isinstance(store, MemoryFeatureStore):
        return len(store.people[person].ia), len(store.people[person].recent)
    assert isinstance(store, RedisFeatureStore)
    return (await store.client.zcard(store.keys.person(person, "ia")),
            await store.client.llen(store.keys.person(person, "r")))


async def test_bad_arguments_name_the_field(store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="window"):
        await store.popular("all", "weekly", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^k:"):
        await store.popular("all", k=0, now=NOW)
    with pytest.raises(ValueError, match="^count:"):
        await store.log_read("g", "w", 0)
    assert await store.popular("co:nowhere", now=NOW) == []
    assert await store.popular("co:nowhere", "trend", now=NOW) == []
    assert (await store.ingest([], now=NOW)).accepted == 0
    assert await store.get_items([]) == {} and await store.upsert_items([]) == 0


async def test_log_pending_before_any_read_and_ack_of_unknown_ids(store: FeatureStore) -> None:
    assert await store.log_pending("fresh", "w", 10) == []
    assert await store.log_read("fresh", "w", 10) == []
    await store.ingest([ev("view", "A", event_id="only")], now=NOW)
    [(entry_id, rec)] = await store.log_read("fresh", "w", 10)
    assert isinstance(rec, LogRecord) and rec.event_id == "only"
    assert await store.log_pending("fresh", "other-worker", 10) == []  # pending is per consumer
    assert await store.log_read("second-group", "w", 10) != []  # every group sees the entry
    assert await store.log_ack("fresh", [entry_id]) == 1
    assert await store.log_ack("fresh", [entry_id]) == 0
    assert await store.log_pending("fresh", "w", 10) == [] and await store.log_length() == 0


# ---- the two adapters agree ----


def random_events(seed: int, n: int) -> list[Event]:
    """A small shop: logins, shared devices, carts, returns, imports, replays; planted so every rule fires."""
    rng = random.Random(seed)
    types = ["view"] * 5 + ["click", "add_to_cart", "add_to_cart", "remove_from_cart", "purchase", "return",
                            "email_click", "search", "content_click"]
    out: list[Event] = []
    for i in range(n):
        t = rng.choice(types)
        ids: dict[str, Any] = {}
        who = rng.randrange(6)
        if rng.random() < 0.5:
            ids["customer_id"] = f"cust-{who}"
        if rng.random() < 0.6 or not ids:
            ids["anonymous_id"] = f"ck-{who + rng.randrange(2)}"
        if rng.random() < 0.3:
            ids["device_id"] = f"dev-{rng.randrange(4)}"
        ts = NOW - (rng.random() * 60 * K.DAY if rng.random() < 0.2 else 900 - i)
        country = rng.choice([None, "UK", "FR"])
        session = rng.choice([None, None, "s-a", "s-b"])
        out.append(Event(
            type=t,  # type: ignore[arg-type]
            channel=rng.choice(["web", "app", "email"]),  # type: ignore[arg-type]
            event_id=f"r{rng.randrange(int(n * 0.9))}",  # about one in ten is a replay
            item_id=f"I{rng.randrange(12)}" if t not in ("search", "email_click", "content_click") else None,
            content_id="K1" if t == "content_click" else None,
            quantity=rng.choice([None, 1, 2, 3]),
            value=round(rng.uniform(1, 50), 2) if t in ("purchase", "return") else None,
            timestamp=datetime.fromtimestamp(ts, tz=timezone.utc),
            context=EventContext(country=country, session_id=session),
            **ids,
        ))
    return out


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{where}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


async def test_both_adapters_give_equal_profiles_popularity_and_logs(redis_url: str, redis_prefix: str) -> None:
    mem = MemoryFeatureStore()
    red = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    try:
        catalog = [Item(item_id=f"I{i}", categories=[f"dept{i % 3}", f"aisle{i % 5}"]) for i in range(10)]
        events = random_events(seed=7, n=300)
        answers = []
        for s in (mem, red):
            await s.upsert_items(catalog)
            pos, got = 0, []
            for size in (1, 7, 50, 100, 142):
                batch = [msgspec.structs.replace(e) for e in events[pos : pos + size]]
                got.append(await s.ingest(batch, now=NOW))
                pos += size
            answers.append(got)
            await s.set_traits({"cust-1": {"segment": "loyal"}})
        assert answers[0] == answers[1]
        accepted = sum(r.accepted for r in answers[0])
        assert 0 < sum(r.duplicates for r in answers[0]) < 150
        ids = [f"cust-{i}" for i in range(6)] + [f"ck-{i}" for i in range(7)] + [f"dev-{i}" for i in range(4)]
        merged = 0
        for any_id in ids:
            a, b = await mem.profile(any_id, now=NOW), await red.profile(any_id, now=NOW)
            assert_same(msgspec.to_builtins(a), msgspec.to_builtins(b), any_id)
            merged += a is not None and any(x.startswith("anonymous:") for x in a.linked_ids)
        assert merged >= 2  # the planted logins did merge anonymous histories
        since = NOW - 30 * K.DAY
        for any_id in ids:
            la, lb = await mem.live(any_id, since, now=NOW), await red.live(any_id, since, now=NOW)
            assert_same(msgspec.to_builtins(la), msgspec.to_builtins(lb), f"live {any_id}")
            check_live_matches_profile(la, await mem.profile(any_id, now=NOW), since, NOW)
        for scope in ("all", "ch:web", "co:UK", "co:FR"):
            for window in ("pop", "trend"):
                assert_same(await mem.popular(scope, window, now=NOW), await red.popular(scope, window, now=NOW),
                            f"{scope}/{window}")
        logs = [[msgspec.to_builtins(r) for _, r in await s.log_read("g", "w", 1000)] for s in (mem, red)]
        assert_same(logs[0], logs[1], "log")
        assert sum(isinstance(r, list) and len(r) > 3 for r in logs[0]) == accepted  # event records; links are 3 long
        assert await mem.log_length() == await red.log_length() == len(logs[0])
    finally:
        await red.close()


def check_live_matches_profile(live: LiveFeatures | None, p: Profile | None, since: float, now: float) -> None:
    """The lean decision read says what the profile says."""
    assert (live is None) == (p is None)
    if live is None or p is None:
        return
    assert live.person == p.customer_id and live.country == p.country and live.orders == p.orders
    assert live.traits == p.traits and set(live.cart) == set(p.cart) and sorted(p.returned) == live.returned
    assert live.purchased == [i for i, _ in sorted(p.purchased.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
    assert live.purchased_since == {i: ts for i, ts in p.purchased.items() if ts >= since}
    assert_same(live.category_affinity, p.category_affinity, "category_affinity")
    open_session = p.session is not None and now - p.session.last <= K.SESSION_TTL
    assert live.session_items == (p.session.items if open_session and p.session else [])


async def test_live_read_of_a_session_cart_and_cooldown(store: FeatureStore) -> None:
    await store.upsert_items([Item(item_id="A", categories=["kitchen"]), Item(item_id="B", categories=["garden"])])
    s = EventContext(session_id="s1", country="UK")
    await store.ingest([ev("purchase", "B", ts=NOW - 40 * K.DAY, event_id="l0"),
                        ev("purchase", "A", ts=NOW - 3 * K.DAY, event_id="l1"),
                        ev("view", "B", ts=NOW - 60, event_id="l2", context=s),
                        ev("add_to_cart", "A", ts=NOW - 30, event_id="l3", context=s)], now=NOW)
    live = await store.live("c1", NOW - 7 * K.DAY, now=NOW)
    assert live is not None and live.person == "c1" and live.country == "UK" and live.orders == 2
    assert live.purchased == ["A", "B"] and list(live.purchased_since) == ["A"]
    assert math.isclose(live.purchased_since["A"], NOW - 3 * K.DAY, abs_tol=1e-3)
    assert live.cart == ["A"] and live.session_items == ["A", "B"]
    assert [c for c, _ in live.category_affinity] == ["kitchen", "garden"]
    later = await store.live("c1", NOW - 7 * K.DAY, now=NOW + K.SESSION_TTL + 1)
    assert later is not None and later.session_items == []  # the session closed
    assert await store.live("nobody", NOW) is None


# ---- Redis failure modes ----


async def test_redis_reloads_a_script_the_server_forgot(redis_url: str, redis_prefix: str) -> None:
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    try:
        await s.ingest([ev("view", "A", event_id="n1")], now=NOW)
        s._shas["ingest"] = "0" * 40  # what SCRIPT FLUSH or a restart does to a cached sha (without flushing a shared server)
        assert (await s.ingest([ev("view", "A", event_id="n2")], now=NOW)).accepted == 1
        assert s._shas["ingest"] != "0" * 40
        p = await s.profile("c1", now=NOW)
        assert p is not None and p.counts["type:view"] == 2
    finally:
        await s.close()


async def test_redis_log_survives_the_stream_being_deleted(redis_url: str, redis_prefix: str) -> None:
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    try:
        await s.ingest([ev("view", "A", event_id="d1")], now=NOW)
        assert len(await s.log_read("g", "w", 10)) == 1
        await s.client.delete(s.keys.log)  # groups go with it: the next read must recreate the group
        await s.ingest([ev("view", "A", event_id="d2")], now=NOW)
        got = await s.log_read("g", "w", 10)
        assert [r.event_id for _, r in got if isinstance(r, LogRecord)] == ["d2"]
    finally:
        await s.close()


async def test_redis_unreachable_or_silent_raises_store_unavailable() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        await dead.ingest([ev("view", "A")], now=NOW)
    assert not await dead.ping()
    await dead.close()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # accept, read, never answer
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = RedisFeatureStore.from_url(f"redis://127.0.0.1:{port}/0", prefix="x", timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await silent.profile("c1")
        with pytest.raises(StoreUnavailable):
            await silent.popular("all")
        assert time.monotonic() - started < 2.0
    finally:
        server.close()
        await silent.client.connection_pool.disconnect()
        await silent.close()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        RedisFeatureStore.from_url("redis://127.0.0.1:6379/15", timeout_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        RedisFeatureStore.from_url("redis://127.0.0.1:6379/15", max_connections=0)


async def test_catalog_version_moves_with_every_upsert(store: FeatureStore) -> None:
    before = await store.catalog_version()
    await store.upsert_items([Item(item_id="V1")])
    once = await store.catalog_version()
    await store.upsert_items([Item(item_id="V1", available=False)])
    assert before < once < await store.catalog_version()


async def test_erase_removes_the_offer_state_too(redis_url: str, redis_prefix: str) -> None:
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    try:
        await s.ingest([ev("view", "A", event_id="x1")], now=NOW)
        k = Keys(redis_prefix)
        r = syncredis.Redis.from_url(redis_url)
        for part in ("ol", "oo"):
            r.zadd(k.person("c1", part), {"d1\x1fo1": NOW})
        r.hset(k.person("c1", "os"), "ver", 3)
        r.hset(k.person("c1", "ox"), "exp1", "line")
        assert await s.erase("c1")
        left = [key.decode() for key in r.scan_iter(match=f"{redis_prefix}:c:*", count=1000)]
        assert left == []
        r.close()
    finally:
        await s.close()



# ---- bounded per-country popularity ----


def country_view(country: str, item: str = "A", who: str = "c1", ts: float | None = None) -> Event:
    return ev("view", item, ts, customer_id=who, context=EventContext(country=country))


def small_registry(monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    """COUNTRY_SCOPES_CAP = cap for both adapters (the script has its numbers rendered in when it is loaded)."""
    monkeypatch.setattr(K, "COUNTRY_SCOPES_CAP", cap)
    rendered = f'["country_scopes_cap"] = {store_module.LUA_CONFIG["country_scopes_cap"]}'
    assert rendered in store_module._LUA
    script = store_module._LUA.replace(rendered, f'["country_scopes_cap"] = {cap}')
    monkeypatch.setitem(store_module.SCRIPTS, "ingest", script)


async def test_country_scopes_are_capped_and_refused_countries_count_elsewhere(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_registry(monkeypatch, 3)
    await store.ingest([country_view(f"X{i}", who=f"p{i}") for i in range(5)], now=NOW)
    known = [c for c in (f"X{i}" for i in range(5)) if await store.popular(f"co:{c}", now=NOW)]
    assert known == ["X0", "X1", "X2"]  # first come; the registry is full
    assert await store.popular("co:X4", "trend", now=NOW) == []
    assert [i for i, _ in await store.popular("all", now=NOW)] == ["A"]  # refused countries still count here
    assert (await store.profile("p4", now=NOW)).country == "X4"  # type: ignore[union-attr]
    await store.ingest([country_view("X1", "B", ts=NOW + 10)], now=NOW + 10)  # a registered country goes on
    assert [i for i, _ in await store.popular("co:X1", now=NOW + 10)] == ["B", "A"]  # B: the same weight, later


async def test_a_country_without_writes_for_its_ttl_leaves_the_registry(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_registry(monkeypatch, 2)
    old = NOW - K.COUNTRY_POP_TTL - 100
    await store.ingest([country_view("OLD", ts=old, who="o1")], now=old)
    await store.ingest([country_view("LIVE", ts=NOW - 50, who="l1")], now=NOW - 50)
    await store.ingest([country_view("NEW", "N", who="n1")], now=NOW)  # OLD is stale: pruned, NEW admitted
    assert [i for i, _ in await store.popular("co:NEW", now=NOW)] == ["N"]
    assert await store.popular("co:OLD", now=NOW) == []
    await store.ingest([country_view("LATE", "L", who="n2")], now=NOW)  # LIVE and NEW fill the registry
    assert await store.popular("co:LATE", now=NOW) == []
    if isinstance(store, RedisFeatureStore):
        k = store.keys
        assert await store.client.zrange(k.country_scopes, 0, -1) == [b"LIVE", b"NEW"]
        assert not await store.client.exists(k.popular("co:OLD"))
        assert K.COUNTRY_POP_TTL - 5 <= await store.client.ttl(k.popular("co:NEW")) <= K.COUNTRY_POP_TTL


# ---- person ids are unambiguous ----


async def test_an_anonymous_id_equal_to_a_customer_id_reads_by_its_qualified_name(store: FeatureStore) -> None:
    await store.ingest([ev("purchase", "BOUGHT", customer_id="12345", event_id="c"),
                        ev("view", "LOOKED", customer_id=None, anonymous_id="12345", event_id="a")], now=NOW)
    customer, visitor = await store.profile("12345", now=NOW), await store.profile("anonymous:12345", now=NOW)
    assert customer is not None and customer.customer_id == "12345" and customer.orders == 1  # a bare id: the customer
    assert visitor is not None and visitor.customer_id == "anonymous:12345"
    assert [r.item_id for r in visitor.recent] == ["LOOKED"] and visitor.orders == 0
    live = await store.live("anonymous:12345", NOW - K.DAY, now=NOW)
    assert live is not None and live.person == "anonymous:12345" and live.purchased == []
    assert await store.resolve("anonymous:12345") == "anonymous:12345" and await store.resolve("12345") == "12345"
    assert await store.profile("device:12345", now=NOW) is None  # a qualified id is never a customer


async def test_a_qualified_id_follows_its_alias_after_a_login(store: FeatureStore) -> None:
    await store.ingest([ev("view", "A", customer_id=None, anonymous_id="v1", device_id="d1", event_id="1")], now=NOW)
    await store.ingest([ev("view", "B", customer_id="c7", anonymous_id="v1", event_id="2")], now=NOW)
    for any_id in ("anonymous:v1", "device:d1", "v1", "d1", "c7"):
        p = await store.profile(any_id, now=NOW)
        assert p is not None and p.customer_id == "c7" and p.counts["type:view"] == 2, any_id
        assert (await store.live(any_id, NOW, now=NOW)).person == "c7"  # type: ignore[union-attr]
    assert await store.profile("email:v1", now=NOW) is None


async def test_a_qualified_read_finds_the_person_writes_go_to(store: FeatureStore) -> None:
    """"device:d1" names the alias, so it reads the person d1's events are written to, as the bare "d1" does, not an
    older anonymous person that happens to bear that name."""
    await store.ingest([ev("view", "A", customer_id=None, device_id="d1", event_id="1")], now=NOW)  # person device:d1
    await store.ingest([ev("view", "B", customer_id=None, anonymous_id="v1", device_id="d1", event_id="2")], now=NOW)
    await store.ingest([ev("view", "C", customer_id=None, device_id="d1", event_id="3")], now=NOW)
    logged = {r.event_id: r.person_id for _, r in await store.log_read("g", "w", 100) if isinstance(r, LogRecord)}
    assert logged["3"] == "anonymous:v1"
    assert await store.resolve("device:d1") == await store.resolve("d1") == logged["3"]
    for any_id in ("device:d1", "d1"):
        p = await store.profile(any_id, now=NOW)
        assert p is not None and p.customer_id == logged["3"] and [r.item_id for r in p.recent] == ["C", "B"], any_id
        assert (await store.live(any_id, NOW, now=NOW)).person == logged["3"]  # type: ignore[union-attr]


def test_a_customer_id_cannot_be_an_alias_person_id() -> None:
    for reserved in ("anonymous:v1", "device:d1", "email:h1"):
        with pytest.raises(ValueError, match="customer_id: must not start with"):
            ev(customer_id=reserved)


# ---- a batch is applied as if one event at a time ----


async def test_one_batch_equals_one_event_at_a_time(redis_url: str) -> None:
    """The script reads a person once per batch and writes each of their keys once; merges, replays and sessions in
    the middle of a batch must come out as they do event by event (and as in the embedded store)."""
    catalog = [Item(item_id=f"I{i}", categories=[f"dept{i % 3}", f"aisle{i % 5}"]) for i in range(12)]
    events = random_events(seed=11, n=240)
    stores = [RedisFeatureStore.from_url(redis_url, prefix=f"test:{uuid.uuid4().hex[:12]}", timeout_s=5.0)
              for _ in range(2)]
    mem = MemoryFeatureStore()
    try:
        for s in (*stores, mem):
            await s.upsert_items(catalog)
        whole = await stores[0].ingest([msgspec.structs.replace(e) for e in events], now=NOW)
        single = [await stores[1].ingest([msgspec.structs.replace(e)], now=NOW) for e in events]
        await mem.ingest([msgspec.structs.replace(e) for e in events], now=NOW)
        assert whole.accepted == sum(r.accepted for r in single) and whole.duplicates > 0
        ids = [f"cust-{i}" for i in range(6)] + [f"ck-{i}" for i in range(7)] + [f"dev-{i}" for i in range(4)]
        for any_id in ids:
            want = msgspec.to_builtins(await mem.profile(any_id, now=NOW))
            for s in stores:
                assert_same(msgspec.to_builtins(await s.profile(any_id, now=NOW)), want, any_id)
                assert_same(msgspec.to_builtins(await s.live(any_id, NOW - K.DAY, now=NOW)),
                            msgspec.to_builtins(await mem.live(any_id, NOW - K.DAY, now=NOW)), f"live {any_id}")
        for scope in ("all", "ch:app", "co:FR"):
            for window in ("pop", "trend"):
                want = await mem.popular(scope, window, now=NOW)  # type: ignore[arg-type]
                for s in stores:
                    got = await s.popular(scope, window, now=NOW)  # type: ignore[arg-type]
                    assert_same(got, want, f"{scope}/{window}")
        logs = [[msgspec.to_builtins(r) for _, r in await s.log_read("g", "w", 2000)] for s in (*stores, mem)]
        assert_same(logs[0], logs[2], "log")
        assert_same(logs[1], logs[2], "log")
    finally:
        r = syncredis.Redis.from_url(redis_url)
        for s in stores:
            keys = list(r.scan_iter(match=f"{s.keys.prefix}:*", count=1000))
            if keys:
                r.delete(*keys)
            await s.close()
        r.close()


async def test_a_login_merges_history_written_earlier_in_the_same_batch(store: FeatureStore) -> None:
    await store.upsert_items([Item(item_id="A", categories=["mugs"])])
    s1 = EventContext(session_id="s1")
    await store.ingest([ev("add_to_cart", "A", NOW - 30, customer_id=None, anonymous_id="ck", quantity=2, context=s1),
                        ev("view", "B", NOW - 20, customer_id=None, anonymous_id="ck", context=s1),
                        ev("view", "C", NOW - 10, customer_id="c5", anonymous_id="ck", context=s1),
                        ev("purchase", "A", NOW - 5, customer_id=None, anonymous_id="ck", value=3.0)], now=NOW)
    p = await store.profile("ck", now=NOW)
    assert p is not None and p.customer_id == "c5" and p.linked_ids == ["anonymous:ck"]
    assert [r.item_id for r in p.recent] == ["A", "C", "B", "A"]
    assert p.counts == {"type:add_to_cart": 1, "type:view": 2, "type:purchase": 1, "channel:web": 4}
    assert p.cart == {} and set(p.purchased) == {"A"} and p.orders == 1
    assert [c for c, _ in p.category_affinity] == ["mugs"]
    assert p.session is not None and p.session.session_id == "s1" and p.session.items == ["A", "C", "B"]
    assert await store.profile("anonymous:ck", now=NOW) == p


async def test_many_events_of_one_person_in_one_batch(store: FeatureStore) -> None:
    """1,000 events (the largest batch) of one customer: one script call, caps and counts as event by event."""
    n = 1000
    events = [ev("purchase" if i % 4 else "view", f"I{i}", NOW - 5000 + i, value=1.0) for i in range(n)]
    assert (await store.ingest(events, now=NOW)).accepted == n
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.counts == {"type:view": n // 4, "type:purchase": 3 * n // 4, "channel:web": n}
    assert p.orders == 3 * n // 4 and p.monetary == pytest.approx(3 * n / 4)
    assert len(p.purchased) == K.PURCHASED_CAP and min(p.purchased, key=p.purchased.__getitem__) == "I334"
    assert p.recent[0].item_id == f"I{n - 1}" and len(p.item_affinity) == 50
    ia, recent = await raw_sizes(store, "c1")
    assert ia == K.ITEM_AFF_CAP and recent == K.RECENT_CAP  # trimmed when the batch ends


async def test_a_session_is_over_once_its_last_event_is_session_ttl_old(store: FeatureStore) -> None:
    await store.ingest([ev("view", "A", NOW - 60, context=EventContext(session_id="s9"))], now=NOW)
    p = await store.profile("c1", now=NOW)
    assert p is not None and p.session is not None and p.session.session_id == "s9"
    later = NOW - 60 + K.SESSION_TTL + 1
    p = await store.profile("c1", now=later)
    assert p is not None and p.session is None
    live = await store.live("c1", NOW, now=later)
    assert live is not None and live.session_items == []
    await store.ingest([ev("view", "B", later - 1, context=EventContext(session_id="s9"))], now=later)
    p = await store.profile("c1", now=later)
    assert p is not None and p.session is not None  # a new one, though the client kept its id
    assert p.session.started == pytest.approx(later - 1) and p.session.items == ["B"]


async def test_log_records_of_any_size_keep_their_bytes(store: FeatureStore) -> None:
    """The script gets each log record as a msgpack str (8-, 16- or 32-bit length) and splices the person into an
    anonymous event's record; the drained record must be the one the event makes."""
    sizes = {"small": 10, "str16": 3000, "str32": 70_000}
    events = [ev("view", "A", event_id=name, properties={"note": "x" * size}) for name, size in sizes.items()]
    events += [ev("view", "A", event_id=f"anon-{name}", customer_id=None, anonymous_id="ck",
                  properties={"note": "y" * size}) for name, size in sizes.items()]
    await store.ingest(events, now=NOW)
    got = {r.event_id: r for _, r in await store.log_read("g", "w", 100) if isinstance(r, LogRecord)}
    for name, size in sizes.items():
        assert got[name].person_id == "c1" and got[name].properties == '{"note":"' + "x" * size + '"}'
        anon = got[f"anon-{name}"]
        assert anon.person_id == "anonymous:ck" and anon.properties == '{"note":"' + "y" * size + '"}'
