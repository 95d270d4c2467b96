"""The offer routes through the test client on the in-process store: catalog validation naming the field, the live
answer and its explanation, cold start, consent, outcomes from events (suppression, cool-down, replays counted once,
posteriors), scopes, a degraded answer when the store is down, and the export protocol (empty audience, cursor)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from features.memory_store import MemoryFeatureStore
from features.offer_store import offer_store_for, publish_and_index
from features.store import StoreUnavailable
from recsvc.app import create_app
from recsvc.settings import Settings
from tests.offers_support import COFFEE_P, registry, tiny_model

KEYS = "w=events:write,r=recs:read,o=offers:read,a=admin"
W = {"Authorization": "Bearer w"}
R = {"Authorization": "Bearer r"}
O = {"Authorization": "Bearer o"}
A = {"Authorization": "Bearer a"}


def offer(offer_id: str, **kw: Any) -> dict[str, Any]:
    return {"offer_id": offer_id, "name": f"offer {offer_id}",
            "channels": {"web": {"headline": f"{offer_id}!"}, "email": {"subject": f"{offer_id} for you"}}, **kw}


@pytest.fixture
def store() -> MemoryFeatureStore:
    return MemoryFeatureStore()


@pytest.fixture
async def client(store: MemoryFeatureStore, tmp_path: Any) -> AsyncIterator[AsyncTestClient]:
    cfg = tmp_path / "offers.toml"
    cfg.write_text("[policy]\nexploration = 0.0\nrefresh_seconds = 0\n[caps]\ntotal = { max = 10, days = 1 }\n"
                   "[caps.channels]\nemail = { max = 1, days = 7 }\n", encoding="utf-8")
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, offers_config=cfg)
    app = create_app(settings, store=store, models=registry(tiny_model(), segments=["vip", "lost"]))
    async with AsyncTestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([offer("o", eligibility={"segments": ["vip"], "exclude_segments": ["vip"]})],
         "$[0].eligibility.exclude_segments", 422),
        ([offer("o", eligibility={"owns_any": ["A"], "owns_none": ["A"]})], "$[0].eligibility.owns_none", 422),
        ([offer("o", eligibility={"vip_only": True})], "$[0].eligibility.vip_only", 422),
        ([offer("o", eligibility={"churn_risk": {"min": 0.8, "max": 0.2}})], "$[0].eligibility.churn_risk.max", 422),
        ([offer("o", eligibility={"churn_risk": {"max": 3}})], "$[0].eligibility.churn_risk", 422),
        ([offer("o", valid_from="2026-12-01T00:00:00Z", valid_until="2026-11-01T00:00:00Z")], "$[0].valid_until", 422),
        ([offer("a"), offer("o", value=-5)], "$[1].value", 422),
        ([offer("o", lever=-1)], "$[0].lever", 422),
        ([offer("o", channels={"fax": {"headline": "x"}})], "$[0].channels", 422),
        ([offer("o", channels={})], "$[0].channels", 422),
        ([offer("o", channels={"web": {"cta": "go"}})], "$[0].channels[...].headline", 422),
        ([offer("o", limit={"count": 0, "days": 7})], "$[0].limit.count", 422),
        ([offer("o", cooldown_days=-1)], "$[0].cooldown_days", 422),
        ([offer("o", colour="red")], "$[0].colour", 422),
        ([offer("o", attributes={"offer.type": "Bar"})], "$[0].attributes", 422),
        ([offer("o", attributes={"id": "x"})], "$[0].attributes", 422),  # the model sees the offer's own as offer.id
        ({"offers": [offer("o", value="ten")]}, "$.offers[0].value", 422),
        ([offer("o"), offer("o")], "$[1].offer_id", 422),
        ([offer("o", eligibility={"segments": ["vips"]})], "$[0].eligibility.segments", 422),  # not a known segment
        ({"offers": [offer("o", eligibility={"exclude_segments": ["vips"]})]}, "$.offers[0].eligibility.exclude_segments",
         422),
        ([offer("a b")], "$[0].offer_id", 422),
    ],
)
async def test_bad_offers_are_rejected_naming_the_field(client: AsyncTestClient, body: Any, field: str,
                                                        status: int) -> None:
    r = await client.put("/v1/catalog/offers", json=body, headers=A)
    assert r.status_code == status and r.json()["field"] == field, r.json()
    assert (await client.get("/v1/catalog/offers", headers=O)).json()["offers"] == []  # nothing half-written


async def test_malformed_catalog_body_is_400(client: AsyncTestClient) -> None:
    r = await client.put("/v1/catalog/offers", content=b"[{", headers=A)
    assert r.status_code == 400 and r.json()["error"] == "malformed_body"


async def test_catalog_upsert_list_get_delete(client: AsyncTestClient) -> None:
    r = await client.put("/v1/catalog/offers", json={"offers": [offer("b"), offer("a", value=3.5)]}, headers=A)
    assert r.status_code == 200 and r.json() == {"upserted": 2}
    listed = (await client.get("/v1/catalog/offers", headers=O)).json()
    assert [o["offer_id"] for o in listed["offers"]] == ["a", "b"] and listed["version"] >= 1
    one = (await client.get("/v1/catalog/offers/a", headers=O)).json()
    assert one["value"] == 3.5 and one["channels"]["email"] == {"subject": "a for you"}
    r = await client.get("/v1/catalog/offers/zz", headers=O)
    assert r.status_code == 404 and r.json()["field"] == "offer_id"
    assert (await client.delete("/v1/catalog/offers/a", headers=A)).json() == {"offer_id": "a", "deleted": True}
    assert (await client.get("/v1/catalog/offers/a", headers=O)).status_code == 404
    assert (await client.put("/v1/catalog/offers", json=[offer("c")], headers=O)).status_code == 403
    assert (await client.get("/v1/customers/c1/offers?channel=web", headers=R)).status_code == 403


async def test_live_answer_explained_and_cold_start(client: AsyncTestClient) -> None:
    await client.put("/v1/catalog/offers", json=[
        offer("coffee", attributes={"type": "Coffee House"}, value=2),
        offer("mugs", items=["MUG"], value=4),
        offer("vip", eligibility={"segments": ["vip"]}, value=50),
        offer("mail", channels={"email": {"subject": "only by mail"}}),
    ], headers=A)
    r = await client.get("/v1/customers/stranger/offers", params={"channel": "web", "k": 3, "explain": "true"},
                         headers=O)
    assert r.status_code == 200
    a = r.json()
    assert a["customer_id"] == "stranger" and a["channel"] == "web" and a["degraded"] is False
    assert len(a["decision_id"]) == 32 and a["model"] == "recsvc-propensity@7"
    assert [o["offer_id"] for o in a["offers"]] == ["coffee", "mugs"]
    coffee, mugs = a["offers"]
    assert coffee["propensity_source"] == "model" and coffee["propensity"] == pytest.approx(COFFEE_P)
    assert mugs["propensity_source"] == "prior" and mugs["propensity"] == pytest.approx(0.05)
    assert coffee["score"] == pytest.approx(coffee["propensity"] * coffee["value"] * coffee["lever"])
    assert coffee["treatment"] == {"headline": "coffee!"} and coffee["p"] == 1.0
    assert {(x["offer_id"], x["rule"]) for x in a["excluded"]} == {("vip", "segment"), ("mail", "channel")}
    plain = (await client.get("/v1/customers/stranger/offers?channel=web", headers=O)).json()
    assert "excluded" not in plain and len(plain["offers"]) == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [("channel=fax", "channel"), ("", "channel"), ("channel=web&k=0", "k"), ("channel=web&k=21", "k"),
     ("channel=web&context=nocolon", "context"), ("channel=web&explain=maybe", "explain")],
)
async def test_bad_query_parameters_are_400(client: AsyncTestClient, query: str, field: str) -> None:
    r = await client.get(f"/v1/customers/c1/offers?{query}", headers=O)
    assert r.status_code == 400 and r.json()["field"] == field, r.json()


async def test_consent_is_recorded_and_gates_email(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    await client.put("/v1/catalog/offers", json=[offer("o")], headers=A)
    await client.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "c1", "item_id": "X",
                                          "anonymous_id": "ck1"}, headers=W)
    before = (await client.get("/v1/customers/c1/consent", headers=O)).json()
    assert before["consent"]["email"] is False and before["consent"]["web"] is True and before["recorded"] == {}
    assert (await client.get("/v1/customers/c1/offers?channel=email", headers=O)).json()["reasons"] == ["consent:email"]
    r = await client.put("/v1/customers/ck1/consent", json={"email": True, "profiling": False}, headers=W)  # by alias
    assert r.status_code == 200 and r.json()["person_id"] == "c1"
    assert r.json()["consent"]["email"] is True and r.json()["recorded"] == {"email": "granted", "profiling": "denied"}
    assert (await client.get("/v1/customers/c1/offers?channel=email", headers=O)).json()["offers"][0]["offer_id"] == "o"
    assert await offer_store_for(store).audience("consent", "email", None, 10) == ["c1"]
    assert (await client.put("/v1/customers/c1/consent", json={"email": False}, headers=W)).status_code == 200
    assert await offer_store_for(store).audience("consent", "email", None, 10) == []
    for bad, field in (({}, "$.consent"), ({"E-mail": True}, "$.E-mail"), ({"email": "yes"}, "$.email")):
        r = await client.put("/v1/customers/c1/consent", json=bad, headers=W)
        assert r.status_code == 422 and r.json()["field"] == field, r.json()


async def test_outcomes_suppress_cool_down_and_count_once(client: AsyncTestClient) -> None:
    await client.put("/v1/catalog/offers", json=[offer("a", value=10), offer("b", value=5, cooldown_days=3),
                                                 offer("c", value=1)], headers=A)
    await client.put("/v1/customers/c1/consent", json={"email": True}, headers=W)
    first = (await client.get("/v1/customers/c1/offers?channel=email", headers=O)).json()
    assert first["offers"][0]["offer_id"] == "a"
    ev = {"type": "offer_accept", "channel": "email", "customer_id": "c1", "offer_id": "a",
          "decision_id": first["decision_id"], "event_id": "acc-1"}
    assert (await client.post("/v1/events", json=[ev], headers=W)).json()["accepted"] == 1
    assert (await client.post("/v1/events", json=[ev], headers=W)).json()["duplicates"] == 1  # a replay
    web = (await client.get("/v1/customers/c1/offers?channel=web&k=3&explain=true", headers=O)).json()
    assert [o["offer_id"] for o in web["offers"]] == ["b", "c"]  # accepted by email: gone on the web too
    assert ("a", "accepted") in {(x["offer_id"], x["rule"]) for x in web["excluded"]}
    await client.post("/v1/events", json={"type": "offer_dismiss", "channel": "web", "customer_id": "c1",
                                          "offer_id": "b", "decision_id": web["decision_id"]}, headers=W)
    again = (await client.get("/v1/customers/c1/offers?channel=web&k=3&explain=true", headers=O)).json()
    assert [o["offer_id"] for o in again["offers"]] == ["c"], again
    assert ("b", "cooldown") in {(x["offer_id"], x["rule"]) for x in again["excluded"]}
    # the accept counted once, as an impression and an accept; the dismiss as an impression
    listed = {o["offer_id"]: o for o in again["offers"]}
    assert listed["c"]["outcomes"] == {"impressions": 0, "accepts": 0}
    c2 = (await client.get("/v1/customers/c2/offers?channel=web&k=3", headers=O)).json()
    got = {o["offer_id"]: o for o in c2["offers"]}
    assert got["a"]["outcomes"] == {"impressions": 1, "accepts": 1}
    assert got["a"]["propensity_source"] == "prior+posterior"
    assert got["b"]["outcomes"] == {"impressions": 1, "accepts": 0}


async def test_store_down_gives_a_degraded_answer_without_offers(store: MemoryFeatureStore, tmp_path: Any) -> None:
    class Down(MemoryFeatureStore):
        async def resolve(self, any_id: str) -> str:
            raise StoreUnavailable("redis: ConnectionError: refused")

    settings = Settings(load_models=False, api_keys=KEYS, log_json=False)
    async with AsyncTestClient(create_app(settings, store=Down())) as c:
        r = await c.get("/v1/customers/c1/offers?channel=web&k=3&explain=true", headers=O)
        assert r.status_code == 200
        a = r.json()
        assert a["degraded"] is True and a["offers"] == [] and a["model"] is None
        assert "did not answer" in a["degraded_reason"] and a["customer_id"] == "c1" and len(a["decision_id"]) == 32


async def test_export_protocol(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    await client.put("/v1/catalog/offers", json=[offer("a", value=2), offer("b")], headers=A)
    r = await client.post("/v1/offers/export", json={"channel": "email", "segment": "vip"}, headers=O)
    assert r.status_code == 200 and r.text == "" and r.headers["content-type"].startswith("application/x-ndjson")
    people = {f"p{i}": {"segment": "vip" if i % 2 else "lost", "consent_email": "granted"} for i in range(7)}
    await publish_and_index(store, people)
    body = {"channel": "email", "segment": "vip", "k": 2}
    r = await client.post("/v1/offers/export", json=body, headers=O)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["customer_id"] for x in lines[:-1]] == ["p1", "p3", "p5"]
    assert lines[-1]["done"] is True and lines[-1]["customers"] == 3
    assert all(x["offers"][0]["offer_id"] == "a" and len(x["offers"]) == 1 for x in lines[:-1])  # 1 email a week
    # resuming after the first customer replays nobody's budget: same decisions, nothing charged twice
    again = await client.post("/v1/offers/export", json={**body, "cursor": lines[0]["cursor"]}, headers=O)
    rest = [json.loads(x) for x in again.text.splitlines()]
    assert [(x["customer_id"], x["decision_id"]) for x in rest[:-1]] == \
        [(x["customer_id"], x["decision_id"]) for x in lines[1:-1]]
    done = await client.post("/v1/offers/export", json={**body, "cursor": lines[-1]["cursor"]}, headers=O)
    assert done.status_code == 200 and done.text == ""
    for bad, status, field in (({**body, "cursor": "garbage!"}, 400, "cursor"),
                               ({**body, "k": 3, "cursor": lines[0]["cursor"]}, 409, "cursor"),
                               ({"channel": "email", "segment": "vip", "all_consented": True}, 422, "$.segment"),
                               ({"channel": "email"}, 422, "$.segment"),
                               ({"channel": "fax", "all_consented": True}, 422, "$.channel"),
                               ({"channel": "email", "customer_ids": ["a b"]}, 422, "$.customer_ids[0]")):
        r = await client.post("/v1/offers/export", json=bad, headers=O)
        assert r.status_code == status and r.json()["field"] == field, r.json()
    everyone = await client.post("/v1/offers/export", json={"channel": "email", "all_consented": True}, headers=O)
    seen = [json.loads(x) for x in everyone.text.splitlines()][:-1]
    assert [x["customer_id"] for x in seen] == [f"p{i}" for i in range(7)]
    assert [x["reasons"] for x in seen if x["customer_id"] in ("p1", "p3", "p5")] == [["cap:email"]] * 3


async def test_contended_or_refused_reservations_offer_nothing_and_log_that() -> None:
    """When the ledger keeps changing under a decision (or the script's re-check refuses it), the answer has no
    offers and says why, and an empty decision is still logged under its decision_id."""
    from features.offer_store import LedgerState, MemoryOfferStore, Reserved
    from recsvc.offer_policy import OfferPolicy
    from recsvc.offer_service import OfferService
    from tests.offers_support import offer as make_offer

    class Contended(MemoryOfferStore):
        def __init__(self, store: MemoryFeatureStore, status: str) -> None:
            super().__init__(store)
            self.status = status
            self.calls = 0

        async def reserve(self, reservations, now, keep_s, export_ttl_s):  # type: ignore[no-untyped-def]
            self.calls += 1
            if all(not r.contacts for r in reservations):
                return await super().reserve(reservations, now, keep_s, export_ttl_s)
            return [Reserved(self.status, reason="cap:total", ledger=LedgerState(version=self.calls))
                    for _ in reservations]

    for status, reason in (("conflict", "ledger_contention"), ("refused", "ledger_refused:cap:total")):
        mem = MemoryFeatureStore()
        shop = Contended(mem, status)
        await shop.upsert_offers([make_offer("o", value=2.0)])
        svc = OfferService(mem, registry(), OfferPolicy(exploration=0.0, max_retries=3), offers=shop)
        a = await svc.decide("c1", "web", 2)
        assert a.offers == [] and a.reasons == [reason] and a.degraded is False
        assert shop.calls == (5 if status == "conflict" else 2)  # 1 + 3 retries, then the empty decision
        logged = [rec for _, rec in await mem.log_read("g", "c", 10)]
        assert [r.decision_id for r in logged] == [a.decision_id] and logged[0].entries == "[]"
