"""One contract suite for every FeatureStore adapter: the Redis run talks to a real server."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis as syncredis

from features import keys as K
from features.keys import Keys
from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.schema import Event, EventContext, Item, LinkRecord, LogRecord
from features.store import FeatureStore

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
    events = [ev("purchase", "UKHIT", NOW - 10, customer_id=f"u{i}", context=EventContext(country="UK")) for i in range(3)]
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
    await store.upsert_items([Item(item_id="杯子-1", title=title, categories=["家居"])])
    await store.ingest([ev("view", "杯子-1", customer_id="顾客😀", anonymous_id="anon-x")], now=NOW)
    assert (await store.get_items(["杯子-1"]))["杯子-1"].title == title
    assert "杯子-1" in await store.item_ids()
    await store.set_traits({"顾客😀": {"segment": "champions", "churn_risk": "0.1"}})
    p = await store.profile("顾客😀", now=NOW)
    assert p is not None and p.traits == {"segment": "champions", "churn_risk": "0.1"}
    assert p.category_affinity[0][0] == "家居"
    assert await store.erase("顾客😀")
    assert await store.profile("顾客😀", now=NOW) is None
    assert await store.profile("anon-x", now=NOW) is None
    assert "顾客😀" in await store.erased_ids()


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


async def test_redis_keys_have_ttls_and_match_the_layout(redis_url: str, redis_prefix: str) -> None:
    s = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2.0)
    await s.upsert_items([Item(item_id="A", categories=["mugs"])])
    await s.ingest([ev("add_to_cart", "A", NOW - 5, anonymous_id="ck", context=EventContext(country="UK")),
                    ev("purchase", "A", NOW - 4, context=EventContext(country="UK"))], now=NOW)
    await s.close()
    r = syncredis.Redis.from_url(redis_url)
    found = {k.decode() for k in r.scan_iter(match=f"{redis_prefix}:*", count=1000)}
    k = Keys(redis_prefix)
    expected = {k.person("c1", part) for part in ("p", "r", "ia", "ca", "b", "ids")}
    expected |= {k.alias("anonymous", "ck"), k.item("A"), k.item_stats("A"), k.dedupe("x")[:-3], k.log}
    expected |= {k.popular(scope) for scope in ("all", "ch:web", "co:UK")}
    expected |= {k.trending("all", int((NOW - 5) // 3600))}
    for key in expected - {k.dedupe("x")[:-3]}:
        assert key in found, key
    unbounded = {k.item("A"), k.log, k.catalog_index} | {k.popular(s_) for s_ in ("all", "ch:web", "co:UK")}
    for key in found - unbounded:
        assert r.ttl(key) > 0, f"{key} has no TTL"
    # every key the script wrote is one the layout in features/keys.py names
    pattern = re.compile(rf"^{re.escape(redis_prefix)}:(c:\{{[^}}]+\}}:(p|r|ia|ca|b|rt|cart|s|ids)|id:\{{[^}}]+\}}"
                         rf"|i:\{{[^}}]+\}}(:n)?|pop:\{{[^}}]+\}}:(pop|h:\d+)|ev:\{{[^}}]+\}}|log|items)$")
    assert all(pattern.match(key) for key in found), [key for key in found if not pattern.match(key)]
    r.close()


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
