"""Recommendations and similar items through the HTTP API, against a real Redis and the in-process store.

The model is the planted bundle of tests/recs_fixtures.py, so every expected answer is known in advance.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.schema import DecisionRecord, Item
from features.store import FeatureStore
from recsvc.app import create_app
from recsvc.settings import Settings
from tests.recs_fixtures import ITEMS, category, registry_with_bundle

KEYS = "reader=recs:read,writer=events:write,admin=admin,offers=offers:read"
READ = {"Authorization": "Bearer reader"}
WRITE = {"Authorization": "Bearer writer"}
ADMIN = {"Authorization": "Bearer admin"}


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FeatureStore]:
    if request.param == "memory":
        s: FeatureStore = MemoryFeatureStore()
    else:
        s = RedisFeatureStore.from_url(request.getfixturevalue("redis_url"),
                                       prefix=request.getfixturevalue("redis_prefix"), timeout_s=2.0)
    await s.upsert_items([Item(item_id=i, title=f"item {i}", categories=[category(i)]) for i in ITEMS])
    yield s
    await s.close()


def app_for(store: FeatureStore, tmp_path: Path, rules: Path | None = None) -> Any:
    """The app on the same data as `store`: the same object in process; for Redis, a store of the app's own (its
    connections belong to the app's event loop) on the same prefix."""
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, rules_path=rules)
    if isinstance(store, RedisFeatureStore):
        url = store.client.connection_pool.connection_kwargs
        settings = Settings(load_models=False, api_keys=KEYS, log_json=False, rules_path=rules,
                            redis_url=f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}",
                            redis_prefix=store.keys.prefix, redis_timeout_s=2.0)
        return create_app(settings, models=registry_with_bundle(tmp_path))
    return create_app(settings, store=store, models=registry_with_bundle(tmp_path))


async def recs(c: AsyncTestClient, customer: str, **params: Any) -> dict[str, Any]:
    r = await c.get(f"/v1/customers/{customer}/recommendations", params={"k": 5, **params}, headers=READ)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def items(answer: dict[str, Any]) -> list[str]:
    return [e["item_id"] for e in answer["items"]]


def reasons(answer: dict[str, Any]) -> dict[str, list[str]]:
    return {e["item_id"]: e["reasons"] for e in answer["items"]}


async def post(c: AsyncTestClient, *events: dict[str, Any]) -> None:
    r = await c.post("/v1/events", json=list(events), headers=WRITE)
    assert r.status_code == 202, r.text


async def test_known_customer_gets_the_champions_candidates(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        a = await recs(c, "u1")
        assert items(a) == ["I03", "I08", "I12", "I17", "I01"]
        assert a["customer_id"] == "u1" and a["channel"] == "web" and a["source"] == "personalized"
        assert a["model"] == "recsvc-recommender" and a["model_version"] == "1" and a["degraded"] is False
        assert len(a["decision_id"]) == 32 and a["items"][0]["title"] == "item I03"
        assert all(r == ["for_you"] for r in reasons(a).values())
        assert a["items"][0]["score"] > a["items"][-1]["score"] > 0
        b = await recs(c, "u1")
        assert b["decision_id"] != a["decision_id"]


async def test_an_event_changes_the_next_answer(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        before = await recs(c, "u1")
        assert not {"I05", "I07"} & set(items(before))
        await post(c, {"type": "view", "channel": "web", "customer_id": "u1", "item_id": "I06",
                       "context": {"session_id": "s1", "country": "GB"}})
        after = await recs(c, "u1")
        assert {"I05", "I07"} <= set(items(after))  # I06's nearest neighbours, seconds after the view
        assert reasons(after)["I05"][0] == "similar_to:I06"
        # a purchase leaves the answer (cool-down), a return too, and the cart's item with it
        await post(c, {"type": "purchase", "channel": "store", "customer_id": "u1", "item_id": "I03"},
                   {"type": "return", "channel": "web", "customer_id": "u1", "item_id": "I12"},
                   {"type": "add_to_cart", "channel": "app", "customer_id": "u1", "item_id": "I17"})
        later = await recs(c, "u1", k=10)
        assert not {"I03", "I12", "I17"} & set(items(later))
        assert "I08" in items(later)


async def test_unavailable_items_leave_at_once_and_rules_are_per_channel(store: FeatureStore, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[channels.web]\nexclude_unavailable = false\n", encoding="utf-8")
    async with AsyncTestClient(app_for(store, tmp_path, rules)) as c:
        r = await c.put("/v1/catalog/items", json=[{"item_id": "I08", "categories": ["c1"], "available": False}],
                        headers=ADMIN)
        assert r.status_code == 200
        assert "I08" not in items(await recs(c, "u1", channel="email"))  # email never shows what is out of stock
        assert "I08" in items(await recs(c, "u1", channel="web"))  # this deployment's web shows it


async def test_caller_filters_and_diversity(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        without = items(await recs(c, "u1", exclude="I03,I08"))
        assert without[:3] == ["I12", "I17", "I01"] and not {"I03", "I08"} & set(without)
        only = await recs(c, "u1", category="C2")
        assert items(only) and all(category(i) == "c2" for i in items(only))
        one = await recs(c, "u1", k=1)
        assert items(one) == ["I03"]
        sms = await recs(c, "u1", channel="sms", k=5)  # sms: at most 2 per category
        cats = [category(i) for i in items(sms)]
        assert max(cats.count(x) for x in set(cats)) <= 2


async def test_cold_start_trending_then_session(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        await post(c, *[{"type": "purchase", "channel": "web", "customer_id": f"buyer{n}", "item_id": "I19",
                         "context": {"country": "GB"}} for n in range(3)],
                   {"type": "view", "channel": "web", "customer_id": "buyer9", "item_id": "I14",
                    "context": {"country": "GB"}})
        fresh = await recs(c, "visitor-1", country="GB")
        assert fresh["source"] == "popular" and items(fresh)[0] == "I19"
        assert reasons(fresh)["I19"] == ["trending_in:GB"]
        await post(c, {"type": "purchase", "channel": "web", "customer_id": "buyer8", "item_id": "I13",
                       "context": {"country": "United Kingdom"}})
        named = await recs(c, "visitor-2", country="United Kingdom")
        assert items(named)[0] == "I13" and reasons(named)["I13"] == ["trending_in:United_Kingdom"]  # one token
        await post(c, {"type": "view", "channel": "web", "anonymous_id": "visitor-1", "item_id": "I11",
                       "context": {"session_id": "v1"}})
        session = await recs(c, "visitor-1")
        assert session["source"] == "session"
        assert items(session)[:2] == ["I10", "I12"] and reasons(session)["I10"][0] == "similar_to:I11"


async def test_customer_unknown_to_the_model_is_scored_live(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        await post(c, *[{"type": "purchase", "channel": "web", "customer_id": "newbie", "item_id": i,
                         "context": {"country": "GB"}} for i in ("I05", "I06", "I07")])
        first = await recs(c, "newbie")
        assert first["source"] in ("popular", "session")  # the model's scores are being computed off the request path
        for _ in range(100):
            answer = await recs(c, "newbie")
            if answer["source"] == "personalized":
                break
            await asyncio.sleep(0.02)
        assert answer["source"] == "personalized"
        assert not {"I05", "I06", "I07"} & set(items(answer))  # bought just now: cool-down


async def test_segment_reason_is_a_token(store: FeatureStore, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"  # a boost strong enough to be a reason of its own (a quarter of the score)
    rules.write_text('[segments."at risk"]\nrepeat_boost = 1.0\n', encoding="utf-8")
    await store.set_traits({"u1": {"segment": "at risk"}})  # the name the segments model publishes
    async with AsyncTestClient(app_for(store, tmp_path, rules)) as c:
        await post(c, {"type": "purchase", "channel": "store", "customer_id": "u1", "item_id": "I01",
                       "timestamp": "2020-01-02T00:00:00Z"})  # long before the cool-down: a repeat purchase
        a = await recs(c, "u1")
        assert reasons(a)["I01"] == ["repeat", "segment:at_risk"]
        assert all(" " not in r for rs in reasons(a).values() for r in rs)


async def test_similar_items(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        r = await c.get("/v1/items/I01/similar", params={"k": 3}, headers=READ)
        assert r.status_code == 200
        body = r.json()
        assert [e["item_id"] for e in body["items"]] == ["I00", "I02", "I03"]
        assert body["items"][0]["reasons"] == ["similar_to:I01"] and body["model_version"] == "1"
        await c.put("/v1/catalog/items", json=[{"item_id": "I99", "categories": ["c1"]},
                                               {"item_id": "I02", "categories": ["c0"], "available": False}],
                    headers=ADMIN)
        assert "I02" not in [e["item_id"] for e in (await c.get("/v1/items/I01/similar", headers=READ)).json()["items"]]
        new = (await c.get("/v1/items/I99/similar", params={"k": 20}, headers=READ)).json()
        assert {e["item_id"] for e in new["items"]} == {f"I0{n}" for n in range(5, 10)}  # same category, by popularity
        assert new["items"][0]["reasons"] == ["same_category:c1"]
        missing = await c.get("/v1/items/NOPE/similar", headers=READ)
        assert missing.status_code == 404 and missing.json()["field"] == "item_id"


async def test_every_answer_is_logged_as_a_decision(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        a = await recs(c, "u1")
        await asyncio.sleep(0.5)  # the decision log flushes in the background
    records = [r for _, r in await store.log_read("t", "t", 1000) if isinstance(r, DecisionRecord)]
    mine = [r for r in records if r.decision_id == a["decision_id"]]
    assert len(mine) == 1
    rec = mine[0]
    assert rec.surface == "recommendations" and rec.person_id == "u1" and rec.model == "recsvc-recommender@1"
    assert [e["id"] for e in json.loads(rec.entries)] == items(a)


async def test_bad_input_is_a_4xx_naming_the_field(store: FeatureStore, tmp_path: Path) -> None:
    async with AsyncTestClient(app_for(store, tmp_path)) as c:
        cases = [
            ("/v1/customers/u1/recommendations?channel=fax", "channel"),
            ("/v1/customers/u1/recommendations?k=0", "k"),
            ("/v1/customers/u1/recommendations?k=101", "k"),
            ("/v1/customers/u1/recommendations?k=ten", "k"),
            ("/v1/customers/u1/recommendations?exclude=a,b%7Bc", "exclude"),
            ("/v1/customers/u1/recommendations?context_item=x*y", "context_item"),
            ("/v1/customers/u%7B1%7D/recommendations", "customer_id"),
            ("/v1/customers/a%0Ab/recommendations", "customer_id"),
            ("/v1/customers/u1%0A/recommendations", "customer_id"),  # a trailing newline too ($ would let it by)
            ("/v1/items/I01%0A/similar", "item_id"),
            ("/v1/customers/u1/recommendations?context_item=I01%0A", "context_item"),
            ("/v1/items/I%3F1/similar", "item_id"),
            ("/v1/items/I01/similar?k=0", "k"),
            ("/v1/customers/u1/recommendations?country=GB%0A", "country"),
            ("/v1/customers/u1/recommendations?country=co%3AGB", "country"),
            ("/v1/customers/u1/recommendations?country=G%2A", "country"),
            ("/v1/customers/u1/recommendations?country=%7BGB%7D", "country"),
            ("/v1/customers/u1/recommendations?country=12", "country"),
            (f"/v1/customers/u1/recommendations?country={'A' * 65}", "country"),
        ]
        for url, field in cases:
            r = await c.get(url, headers=READ)
            assert 400 <= r.status_code < 500, (url, r.status_code, r.text)
            assert field in (r.json().get("field") or "") + r.json()["detail"], (url, r.text)
        bad = await c.get("/v1/customers/u1/recommendations?country=GB%0A", headers=READ)
        assert (bad.status_code, bad.json()["field"]) == (400, "country")
        assert (await c.get("/v1/customers/u1/recommendations?exclude=a%7B", headers=READ)).json()["field"] == "exclude"
        for country in ("GB", "United Kingdom", "Côte d'Ivoire", "St. Kitts & Nevis", "Korea (South)", "A" * 64):
            assert (await recs(c, "nobody", country=country))["source"] == "popular", country
        odd = await recs(c, "x:y")  # ':' is allowed inside a hash tag: a valid cold-start answer
        assert odd["source"] == "popular"
        assert (await c.get("/v1/customers/u1/recommendations")).status_code == 401
        assert (await c.get("/v1/customers/u1/recommendations", headers=WRITE)).status_code == 403
        assert (await c.get("/v1/customers/u1/recommendations",
                            headers={"Authorization": "Bearer offers"})).status_code == 403
        assert (await c.post("/v1/admin/models/reload", headers=READ)).status_code == 403
