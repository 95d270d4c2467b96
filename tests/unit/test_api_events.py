"""POST /v1/events through Litestar's test client and the in-process store: what is accepted, what is refused
(with the field named), and that nothing of a refused request is stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from litestar.serialization import encode_json
from litestar.testing import AsyncTestClient, TestClient

from features.memory_store import MemoryFeatureStore
from features.schema import Event, IngestResult
from features.store import StoreUnavailable
from recsvc.app import create_app
from recsvc.settings import Settings

KEYS = "writer=events:write,reader=recs:read,admin=admin"
W = {"Authorization": "Bearer writer"}
R = {"Authorization": "Bearer reader"}


def event(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"type": "view", "channel": "web", "customer_id": "c1", "item_id": "A"}
    return {k: v for k, v in {**base, **kw}.items() if v is not None}


@pytest.fixture
def store() -> MemoryFeatureStore:
    return MemoryFeatureStore()


@pytest.fixture
async def client(store: MemoryFeatureStore) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=store)) as c:
        yield c


async def assert_nothing_stored(store: MemoryFeatureStore, *ids: str) -> None:
    assert await store.log_length() == 0
    for any_id in ids or ("c1",):
        assert await store.profile(any_id) is None


async def test_single_event_then_batch_with_a_replay(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    r = await client.post("/v1/events", json=event(event_id="e1"), headers=W)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0, "duplicate_ids": []}
    batch = [event(event_id="e1"), event(event_id="e2", type="purchase", item_id="B", value=3.5, quantity=2),
             event(event_id="e3", item_id="B")]
    r = await client.post("/v1/events", json=batch, headers=W)
    assert r.status_code == 202 and r.json() == {"accepted": 2, "duplicates": 1, "duplicate_ids": ["e1"]}
    assert await store.log_length() == 3  # the replay did not reach the offline log either
    p = (await client.get("/v1/customers/c1/profile", headers=R)).json()
    assert p["counts"]["type:view"] == 2 and p["counts"]["type:purchase"] == 1
    assert p["orders"] == 1 and p["monetary"] == pytest.approx(3.5)  # value is the line total
    assert [i for i, _ in p["item_affinity"]] == ["B", "A"]  # a view + a purchase outweighs one view


async def test_the_answer_is_sent_as_litestar_would_send_it(client: AsyncTestClient) -> None:
    r = await client.post("/v1/events", json=[event(event_id="s1"), event(event_id="s1")], headers=W)
    assert r.status_code == 202 and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["x-request-id"]
    assert r.content == encode_json(IngestResult(accepted=1, duplicates=1, duplicate_ids=["s1"]))


async def test_a_full_batch_of_1000_is_accepted(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    batch = [event(event_id=f"e{n}", customer_id=f"c{n % 10}") for n in range(1000)]
    r = await client.post("/v1/events", json=batch, headers=W)
    assert r.status_code == 202 and r.json()["accepted"] == 1000
    assert await store.log_length() == 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([event(type="teleport")], "$[0].type"),
        ([event(channel="fax")], "$[0].channel"),
        ([event(customer_id=None)], "$[0].customer_id"),  # no identifier at all
        ([event(), event(timestamp="2999-01-01T00:00:00Z")], "$[1].timestamp"),
        ([event(timestamp="1999-12-31T23:59:59Z")], "$[0].timestamp"),
        ([event(timestamp="yesterday")], "$[0].timestamp"),
        ([event(quantity=10**9)], "$[0].quantity"),
        ([event(quantity=1.5)], "$[0].quantity"),
        ([event(value="lots")], "$[0].value"),
        ([event(item_id=None)], "$[0].item_id"),
        ([event(type="offer_accept")], "$[0].offer_id"),
        ([event(customer_id="a}b")], "$[0].customer_id"),
        ([event(customer_id="x" * 129)], "$[0].customer_id"),
        ([event(customer_id="anonymous:v1")], "$[0].customer_id"),  # the person id of anonymous visitor v1
        ([event(), event(customer_id="device:d1")], "$[1].customer_id"),
        ([event(context={"country": "UK", "mood": "happy"})], "$[0].context.mood"),
        ([event(properties={f"k{i}": i for i in range(51)})], "$[0].properties"),
        ([event(surprise=1)], "$[0].surprise"),
        (event(channel="fax"), "$.channel"),  # a single object, not an array
        ([event()] * 1001, "$.batch"),
    ],
)
async def test_bad_events_are_422_naming_the_field_and_store_nothing(
    client: AsyncTestClient, store: MemoryFeatureStore, body: object, field: str
) -> None:
    r = await client.post("/v1/events", json=body, headers=W)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation" and r.json()["field"] == field, r.json()
    assert r.json()["detail"]
    await assert_nothing_stored(store)


async def test_one_bad_event_at_the_end_rejects_the_whole_batch(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    batch = [event(event_id=f"e{n}", customer_id=f"c{n}") for n in range(999)] + [event(channel="fax")]
    r = await client.post("/v1/events", json=batch, headers=W)
    assert r.status_code == 422 and r.json()["field"] == "$[999].channel"
    await assert_nothing_stored(store, "c0", "c998")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[" + json.dumps(event()).encode() + b",", 400),  # truncated
        (b"\xff\xfe\x00garbage", 400),  # not UTF-8
        ('[{"type": "view", "channel": "web", "customer_id": "caf\xe9", "item_id": "A"}]'.encode("latin-1"), 400),
        (b"", 400),
        (b"[1, 2]", 422),
        (b'"text"', 422),
        (b"null", 422),
    ],
)
async def test_malformed_bodies_are_4xx_with_the_error_shape(
    client: AsyncTestClient, store: MemoryFeatureStore, raw: bytes, status: int
) -> None:
    r = await client.post("/v1/events", content=raw, headers={**W, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"error", "detail", "field"}
    await assert_nothing_stored(store)


def spliced(body: object, marker: str, raw: bytes) -> bytes:
    """The JSON text of `body` with the string `marker` replaced by raw bytes (which may not be UTF-8)."""
    return json.dumps(body, ensure_ascii=False).encode().replace(marker.encode(), raw)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (event(customer_id="@@"), "$.customer_id"),
        ([event(event_id=f"e{n}") for n in range(3)] + [event(item_id="@@")], "$[3].item_id"),
        ([event(), event(context={"country": "@@"})], "$[1].context.country"),
        ([event(properties={"q": "@@"})], "$[0].properties.q"),
        ([event(properties={"@@": 1})], "$[0].properties"),  # a key: the object holding it
    ],
)
async def test_invalid_utf8_inside_a_string_names_its_field(
    client: AsyncTestClient, store: MemoryFeatureStore, body: object, field: str
) -> None:
    for raw in (b"caf\xe9", b"\xff\xfe", b"ok\xc3"):  # latin-1, never UTF-8, a truncated sequence
        headers = {**W, "Content-Type": "application/json"}
        r = await client.post("/v1/events", content=spliced(body, "@@", raw), headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "malformed_body" and r.json()["field"] == field, r.json()
        assert "UTF-8" in r.json()["detail"]
    await assert_nothing_stored(store)


async def test_invalid_utf8_in_a_catalog_item_names_its_field(client: AsyncTestClient) -> None:
    body = {"items": [{"item_id": "A", "title": "mug"}, {"item_id": "B", "title": "@@"}]}
    raw = spliced(body, "@@", b"\xe9t\xe9")
    r = await client.put("/v1/catalog/items", content=raw, headers={"Authorization": "Bearer admin"})
    assert r.status_code == 400 and r.json()["field"] == "$.items[1].title", r.text


async def test_body_over_one_megabyte_is_413(client: AsyncTestClient, store: MemoryFeatureStore) -> None:
    big = json.dumps([event(event_id=f"e{n}", properties={"pad": "x" * 1000}) for n in range(1000)]).encode()
    assert len(big) > 1_048_576
    r = await client.post("/v1/events", content=big, headers=W)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    await assert_nothing_stored(store)


def test_chunked_body_over_the_limit_is_413_too(store: MemoryFeatureStore) -> None:
    """Without a Content-Length the limit is enforced while reading."""
    chunk = json.dumps(event(properties={"pad": "x" * 1000})).encode()

    def body() -> Iterator[bytes]:
        yield b"["
        for _ in range(1200):
            yield chunk + b","
        yield chunk + b"]"

    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=store)) as c:
        r = c.post("/v1/events", content=body(), headers=W)
        assert r.status_code == 413, r.text


class FailingStore(MemoryFeatureStore):
    """Redis gone: every write and ping fails the way RedisFeatureStore reports it."""

    async def ingest(self, events: Sequence[Event], now: float | None = None) -> IngestResult:
        raise StoreUnavailable("redis: ConnectionError: connection refused")

    async def ping(self) -> bool:
        return False


async def test_store_unavailable_is_503_with_retry_after() -> None:
    store = FailingStore()
    async with AsyncTestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=store)) as c:
        r = await c.post("/v1/events", json=event(), headers=W)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "store_unavailable"
        assert (await c.get("/ready")).status_code == 503
        assert (await c.get("/health")).json() == {"status": "ok"}
