"""Property tests: no body, encoding or path id a client can send makes the service answer 500, and every 4xx
has the one error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from features.memory_store import MemoryFeatureStore
from recsvc.app import create_app
from recsvc.settings import Settings

AUTH = {"Authorization": "Bearer k"}
FIELDS = ["type", "channel", "customer_id", "anonymous_id", "item_id", "offer_id", "timestamp", "quantity", "value",
          "context", "properties", "event_id", "items", "title", "price", "categories", "x"]
VALID = {"type": "view", "channel": "web", "customer_id": "c1", "item_id": "A"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["view", "web", "purchase", "2011-12-01T10:00:00Z", "2999-01-01T00:00:00Z", "c1", "a{b}"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(FIELDS), kids, max_size=6),
    max_leaves=20,
)
# near-valid events: one field replaced by anything
mutated_events = st.builds(lambda k, v: {**VALID, k: v}, st.sampled_from(FIELDS), json_values)


def encodings(value: object) -> st.SearchStrategy[bytes]:
    text = json.dumps(value, ensure_ascii=False)
    return st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]).map(
        lambda enc: text.encode(enc, errors="replace")
    )


bodies = (
    json_values.flatmap(encodings)
    | st.lists(mutated_events, max_size=3).map(lambda v: json.dumps(v).encode())
    | mutated_events.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
    # raw bytes spliced into a JSON string: invalid UTF-8 there is a different error inside msgspec
    | st.binary(min_size=1, max_size=4).map(lambda b: json.dumps(VALID).encode()[:-2] + b + b'"}')
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(load_models=False, api_keys="k=admin", log_json=False), store=MemoryFeatureStore())
    with TestClient(app) as c:
        yield c


def check(r: object) -> None:
    status = r.status_code  # type: ignore[attr-defined]
    assert status < 500, r.text  # type: ignore[attr-defined]
    if status >= 400:
        body = r.json()  # type: ignore[attr-defined]
        assert set(body) <= {"error", "detail", "field"} and body["error"] and body["detail"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies)
def test_no_event_body_gives_a_500(client: TestClient, raw: bytes) -> None:
    check(client.post("/v1/events", content=raw, headers=AUTH))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies)
def test_no_catalog_body_gives_a_500(client: TestClient, raw: bytes) -> None:
    check(client.put("/v1/catalog/items", content=raw, headers=AUTH))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(any_id=st.text(min_size=1, max_size=140))
def test_no_path_id_gives_a_500(client: TestClient, any_id: str) -> None:
    quoted = quote(any_id, safe="")
    for r in (client.get(f"/v1/customers/{quoted}/profile", headers=AUTH),
              client.get(f"/v1/catalog/items/{quoted}", headers=AUTH)):
        check(r)
        assert r.status_code in (200, 400, 404, 405), r.text


def not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


STRING_FIELDS = ["customer_id", "anonymous_id", "item_id", "event_id", "type", "channel"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(STRING_FIELDS),
    at=st.integers(0, 2),
    # no quote, backslash or control byte: those break the JSON itself, whatever the encoding
    raw=st.binary(min_size=1, max_size=6).filter(lambda b: not_utf8(b) and min(b) >= 0x20 and not {34, 92} & set(b)),
)
def test_bytes_that_are_not_utf8_are_400_naming_their_field(
    client: TestClient, field: str, at: int, raw: bytes
) -> None:
    batch = [dict(VALID) for _ in range(3)]
    batch[at][field] = "@@"
    body = json.dumps(batch).encode().replace(b"@@", raw)
    r = client.post("/v1/events", content=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"] == "malformed_body", r.text
    assert r.json()["field"] == f"$[{at}].{field}", r.text
