"""The ingestion API through Litestar's test client: happy paths, every kind of bad input, auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from features.memory_store import MemoryFeatureStore
from recsvc.app import create_app
from recsvc.security import ConfigError, hash_key
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
def client(store: MemoryFeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(api_keys=KEYS, log_json=False), store=store)) as c:
        yield c


def test_single_and_batch_events_are_accepted_and_replays_counted(client: TestClient, store: MemoryFeatureStore) -> None:
    r = client.post("/v1/events", json=event(event_id="e1"), headers=W)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0, "duplicate_ids": []}
    batch = [event(event_id="e1"), event(event_id="e2", type="purchase", value=3.5, quantity=1)]
    r = client.post("/v1/events", json=batch, headers=W)
    assert r.json() == {"accepted": 1, "duplicates": 1, "duplicate_ids": ["e1"]}
    p = client.get("/v1/customers/c1/profile", headers=R).json()
    assert p["counts"]["type:view"] == 1 and p["orders"] == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([event(type="teleport")], 422, "$[0].type"),
        ([event(channel="fax")], 422, "$[0].channel"),
        ([event(customer_id=None)], 422, "$[0].customer_id"),
        ([event(), event(timestamp="2999-01-01T00:00:00Z")], 422, "$[1].timestamp"),
        ([event(quantity=10**9)], 422, "$[0].quantity"),
        ([event(value="lots")], 422, "$[0].value"),
        ([event(item_id=None)], 422, "$[0].item_id"),
        ([event(customer_id="a}b")], 422, "$[0].customer_id"),
        ([event(surprise=1)], 422, "$[0].surprise"),
        ([event()] * 1001, 422, "$.batch"),
    ],
)
def test_bad_events_name_the_field_and_store_nothing(
    client: TestClient, store: MemoryFeatureStore, body: object, status: int, field: str
) -> None:
    r = client.post("/v1/events", json=body, headers=W)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    assert store.seen == set() and not store._log


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00garbage", b"", b"[1, 2]", b'"text"'])
def test_malformed_bodies_are_4xx(client: TestClient, store: MemoryFeatureStore, raw: bytes) -> None:
    r = client.post("/v1/events", content=raw, headers=W)
    assert 400 <= r.status_code < 500, r.text
    assert "field" in r.json() and store.seen == set()


def test_body_over_one_megabyte_is_413(client: TestClient) -> None:
    big = json.dumps([event(properties={"pad": "x" * 1000}) for _ in range(1100)]).encode()
    assert len(big) > 1_048_576
    r = client.post("/v1/events", content=big, headers=W)
    assert r.status_code == 413


def test_unicode_round_trips(client: TestClient) -> None:
    item = {"item_id": "杯子-☕", "title": "白色心形挂灯 🕯️", "categories": ["家居", "家居/灯"], "price": 2.5}
    assert client.put("/v1/catalog/items", json=[item], headers=A).json() == {"upserted": 1}
    assert client.get("/v1/catalog/items/杯子-☕", headers=R).json()["title"] == "白色心形挂灯 🕯️"
    client.post("/v1/events", json=event(customer_id="顾客😀", item_id="杯子-☕"), headers=W)
    p = client.get("/v1/customers/顾客😀/profile", headers=R).json()
    assert p["customer_id"] == "顾客😀" and p["category_affinity"][0][0] in ("家居", "家居/灯")


def test_catalog_rejects_bad_items_naming_the_field(client: TestClient) -> None:
    r = client.put("/v1/catalog/items", json={"items": [{"item_id": "A", "price": -1}]}, headers=A)
    assert r.status_code == 422 and r.json()["field"] == "$.items[0].price"
    assert client.get("/v1/catalog/items/A", headers=R).status_code == 404


def test_auth_scopes(client: TestClient) -> None:
    assert client.post("/v1/events", json=event()).status_code == 401
    assert client.post("/v1/events", json=event(), headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/v1/events", json=event(), headers=R).status_code == 403
    assert client.post("/v1/events", json=event(), headers=A).status_code == 202  # admin implies every scope
    assert client.put("/v1/catalog/items", json=[], headers=W).status_code == 403
    assert client.delete("/v1/customers/c1", headers=R).status_code == 403
    assert client.get("/health").status_code == 200 and client.get("/ready").json()["store"] == "memory"
    assert client.get("/schema/openapi.json").status_code == 200


def test_erase(client: TestClient) -> None:
    client.post("/v1/events", json=event(anonymous_id="ck"), headers=W)
    assert client.delete("/v1/customers/c1", headers=A).json() == {"customer_id": "c1", "erased": True}
    assert client.get("/v1/customers/c1/profile", headers=R).status_code == 404
    assert client.get("/v1/customers/ck/profile", headers=R).status_code == 404


def test_path_ids_are_validated(client: TestClient) -> None:
    r = client.get("/v1/customers/a*b/profile", headers=R)
    assert r.status_code == 400 and r.json()["field"] == "customer_id"


def test_refuses_to_start_without_keys_and_warns_when_open(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECSVC_API_KEYS"):
        create_app(Settings())
    with pytest.raises(ConfigError, match="unknown or missing scopes"):
        create_app(Settings(api_keys="k=recs:write"))
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# comment\n{hash_key('s3cret')} recs:read\n")
    with TestClient(create_app(Settings(api_keys_file=str(keyfile), log_json=False), store=MemoryFeatureStore())) as c:
        assert c.get("/v1/customers/x/profile", headers={"Authorization": "Bearer s3cret"}).status_code == 404
        assert c.get("/v1/customers/x/profile", headers={"Authorization": "Bearer other"}).status_code == 401
    with TestClient(create_app(Settings(open_access=True, log_json=False), store=MemoryFeatureStore())) as c:
        assert c.post("/v1/events", json=event()).status_code == 202


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(
        ["type", "channel", "customer_id", "item_id", "timestamp", "quantity", "value", "context", "event_id", "x"]
    ), kids, max_size=6),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | st.binary(max_size=64))
def test_no_body_ever_gives_a_500(client: TestClient, body: object) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/events", content=raw, headers=W)
    assert r.status_code < 500, r.text
