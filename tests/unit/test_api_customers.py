"""Catalog and customer routes through the test client: upserts, lookups by any linked id, erasure, unicode,
and path ids validated with a 400 that names the parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from features.memory_store import MemoryFeatureStore
from features.schema import MAX_ITEMS_PER_UPSERT
from recsvc.app import create_app
from recsvc.settings import Settings

KEYS = "writer=events:write,reader=recs:read,ops=admin"
W = {"Authorization": "Bearer writer"}
R = {"Authorization": "Bearer reader"}
A = {"Authorization": "Bearer ops"}


def event(**kw: object) -> dict[str, object]:
    return {"type": "view", "channel": "web", "customer_id": "c1", "item_id": "A", **kw}


@pytest.fixture
def store() -> MemoryFeatureStore:
    return MemoryFeatureStore()


@pytest.fixture
async def client(store: MemoryFeatureStore) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=store)) as c:
        yield c


async def test_catalog_upsert_both_body_shapes_and_get(client: AsyncTestClient) -> None:
    items = [{"item_id": "A", "title": "mug", "categories": ["home", "home/kitchen"], "price": 2.5},
             {"item_id": "B", "title": "lamp", "available": False}]
    r = await client.put("/v1/catalog/items", json=items, headers=A)
    assert r.status_code == 200 and r.json() == {"upserted": 2}
    r = await client.put("/v1/catalog/items", json={"items": [{"item_id": "A", "title": "big mug", "price": 3.0}]},
                         headers=A)
    assert r.json() == {"upserted": 1}
    got = (await client.get("/v1/catalog/items/A", headers=R)).json()
    assert got["title"] == "big mug" and got["price"] == 3.0
    assert (await client.get("/v1/catalog/items/B", headers=R)).json()["available"] is False
    r = await client.get("/v1/catalog/items/nope", headers=R)
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "no catalog item 'nope'",
                                                 "field": "item_id"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"item_id": "A", "price": -1}]}, "$.items[0].price"),
        ([{"item_id": "A"}, {"title": "no id"}], "$[1]"),
        ([{"item_id": "A", "categories": "home"}], "$[0].categories"),
        ({"things": []}, "$.things"),
        ([{"item_id": "A*"}], "$[0].item_id"),
    ],
)
async def test_catalog_rejects_bad_items_naming_the_field(client: AsyncTestClient, body: object, field: str) -> None:
    r = await client.put("/v1/catalog/items", json=body, headers=A)
    assert r.status_code == 422 and r.json()["field"] == field, r.json()
    assert (await client.get("/v1/catalog/items/A", headers=R)).status_code == 404  # nothing half-written


async def test_catalog_batch_limit(client: AsyncTestClient) -> None:
    too_many = [{"item_id": str(n)} for n in range(MAX_ITEMS_PER_UPSERT + 1)]
    r = await client.put("/v1/catalog/items", json=too_many, headers=A)
    assert r.status_code == 422 and r.json()["field"] == "$.items" and "10000" in r.json()["detail"]
    assert (await client.get("/v1/catalog/items/0", headers=R)).status_code == 404


async def test_unicode_round_trips_through_catalog_and_profile(client: AsyncTestClient) -> None:
    item = {"item_id": "杯子-☕", "title": "白色心形挂灯 🕯️", "categories": ["家居", "家居/灯"], "price": 2.5}
    assert (await client.put("/v1/catalog/items", json=[item], headers=A)).json() == {"upserted": 1}
    assert (await client.get("/v1/catalog/items/杯子-☕", headers=R)).json()["title"] == "白色心形挂灯 🕯️"
    r = await client.post("/v1/events", json=event(customer_id="顾客😀", item_id="杯子-☕", type="add_to_cart",
                                                   context={"country": "Ελλάδα"}), headers=W)
    assert r.status_code == 202
    p = (await client.get("/v1/customers/顾客😀/profile", headers=R)).json()
    assert p["customer_id"] == "顾客😀" and p["country"] == "Ελλάδα"
    assert p["cart"] == {"杯子-☕": 1} and p["item_affinity"][0][0] == "杯子-☕"
    assert {c for c, _ in p["category_affinity"]} == {"家居", "家居/灯"}


async def test_profile_by_a_linked_anonymous_id(client: AsyncTestClient) -> None:
    """Browsing as ck-9, then logging in as c9: both ids lead to the same person and the same history."""
    await client.post("/v1/events", json=event(customer_id=None, anonymous_id="ck-9", item_id="X"), headers=W)
    await client.post("/v1/events", json=event(customer_id="c9", anonymous_id="ck-9", item_id="Y"), headers=W)
    by_anon = (await client.get("/v1/customers/ck-9/profile", headers=R)).json()
    by_customer = (await client.get("/v1/customers/c9/profile", headers=R)).json()
    assert by_anon["customer_id"] == by_customer["customer_id"] == "c9"
    assert by_anon["counts"] == by_customer["counts"] == {"type:view": 2, "channel:web": 2}
    assert "anonymous:ck-9" in by_anon["linked_ids"]
    assert {i for i, _ in by_anon["item_affinity"]} == {"X", "Y"}
    r = await client.get("/v1/customers/stranger/profile", headers=R)
    assert r.status_code == 404 and r.json()["field"] == "customer_id" and "stranger" in r.json()["detail"]


async def test_erase_removes_the_person_and_every_linked_id(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    await client.post("/v1/events", json=event(anonymous_id="ck"), headers=W)
    await client.post("/v1/events", json=event(customer_id="c2"), headers=W)
    r = await client.delete("/v1/customers/c1", headers=A)
    assert r.status_code == 200 and r.json() == {"customer_id": "c1", "erased": True}
    assert (await client.get("/v1/customers/c1/profile", headers=R)).status_code == 404
    assert (await client.get("/v1/customers/ck/profile", headers=R)).status_code == 404
    assert (await client.get("/v1/customers/c2/profile", headers=R)).status_code == 200  # others untouched
    assert "c1" in await store.erased_ids()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/customers/a*b/profile", "customer_id"),
        ("/v1/customers/a%20b/profile", "customer_id"),
        ("/v1/customers/%7Bx%7D/profile", "customer_id"),
        ("/v1/customers/" + "x" * 129 + "/profile", "customer_id"),
        ("/v1/catalog/items/a%5Bb", "item_id"),
        ("/v1/catalog/items/tab%09", "item_id"),
    ],
)
async def test_path_ids_are_validated(client: AsyncTestClient, path: str, field: str) -> None:
    r = await client.get(path, headers=R)
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert r.json()["detail"].startswith(f"{field}: ")


async def test_erase_validates_the_path_id_too(client: AsyncTestClient) -> None:
    r = await client.delete("/v1/customers/a%3Fb", headers=A)
    assert r.status_code == 400 and r.json()["field"] == "customer_id"
