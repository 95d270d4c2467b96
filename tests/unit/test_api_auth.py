"""API keys and scopes, refusing to start without keys, the open-access and embedded-store warnings (as JSON log
lines), the lifespan closing what it opened, and the rate-limit hook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

import recsvc.lifespan
from features.memory_store import MemoryFeatureStore
from recsvc.app import create_app
from recsvc.errors import RateLimited
from recsvc.security import ConfigError, KeyRing, Principal, hash_key
from recsvc.settings import Settings

KEYS = "writer=events:write,reader=recs:read+offers:read,ops=admin"
EVENT = {"type": "view", "channel": "web", "customer_id": "c1", "item_id": "A"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=MemoryFeatureStore())) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "body", "key", "status"),
    [
        ("POST", "/v1/events", EVENT, None, 401),
        ("POST", "/v1/events", EVENT, "nope", 401),
        ("POST", "/v1/events", EVENT, "", 401),
        ("POST", "/v1/events", EVENT, "reader", 403),
        ("POST", "/v1/events", EVENT, "writer", 202),
        ("POST", "/v1/events", EVENT, "ops", 202),  # admin implies every scope
        ("PUT", "/v1/catalog/items", [], "writer", 403),
        ("PUT", "/v1/catalog/items", [], "ops", 200),
        ("GET", "/v1/catalog/items/A", None, "writer", 403),
        ("GET", "/v1/catalog/items/A", None, "reader", 404),
        ("GET", "/v1/customers/c1/profile", None, None, 401),
        ("GET", "/v1/customers/c1/profile", None, "reader", 404),
        ("DELETE", "/v1/customers/c1", None, "reader", 403),
        ("DELETE", "/v1/customers/c1", None, "ops", 200),
        ("GET", "/health", None, None, 200),
        ("GET", "/ready", None, None, 200),
        ("GET", "/schema/openapi.json", None, None, 200),
    ],
)
def test_scopes(client: TestClient, method: str, path: str, body: object, key: str | None, status: int) -> None:
    r = client.request(method, path, json=body, headers=bearer(key) if key is not None else {})
    assert r.status_code == status, r.text
    if status in (401, 403):
        assert r.json()["error"] == {401: "unauthorized", 403: "forbidden"}[status]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_auth_scheme_is_case_insensitive_and_other_schemes_are_refused(client: TestClient) -> None:
    assert client.post("/v1/events", json=EVENT, headers={"Authorization": "bearer writer"}).status_code == 202
    r = client.post("/v1/events", json=EVENT, headers={"Authorization": "Basic d3JpdGVyOg=="})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_keyring_parsing_and_lookup(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# ops keys\n\n{hash_key('s3cret').upper()}\trecs:read+offers:read\n{hash_key('root')} admin\n")
    ring = KeyRing.from_config("web=events:write", str(keyfile), open_access=False)
    assert ring.lookup("s3cret") == Principal(key_id=hash_key("s3cret")[:12], scopes=frozenset({"recs:read", "offers:read"}))
    assert ring.lookup("web") is not None and ring.lookup("web").scopes == {"events:write"}  # type: ignore[union-attr]
    assert ring.lookup("root").allows("offers:read")  # type: ignore[union-attr]
    assert ring.lookup("s3cre") is None and ring.lookup("") is None
    assert all(len(h) == 64 for h, _ in ring.keys)  # only hashes are kept


@pytest.mark.parametrize(
    ("spec", "file_text", "message"),
    [
        ("", None, "no API keys configured"),
        ("k=recs:write", None, "unknown or missing scopes"),
        ("k=", None, "unknown or missing scopes"),
        ("justakey", None, "expected key=scope"),
        ("", "abc recs:read\n", "line 1: expected 'sha256hex"),
        ("", f"{'0' * 64}\n", "line 1: unknown or missing scopes"),
        ("", f"{'z' * 64} admin\n", "line 1: expected 'sha256hex"),
    ],
)
def test_refuses_to_start_on_bad_or_missing_keys(tmp_path: Path, spec: str, file_text: str | None, message: str) -> None:
    file = None
    if file_text is not None:
        file = tmp_path / "keys"
        file.write_text(file_text)
    with pytest.raises(ConfigError, match=message) as info:
        create_app(Settings(load_models=False, api_keys=spec, api_keys_file=str(file) if file else None))
    assert "justakey" not in str(info.value)  # a malformed secret is never echoed


def test_hashed_key_file_through_http(tmp_path: Path) -> None:
    """Keys only the file knows, as hashes (one in upper-case hex), with no RECSVC_API_KEYS: authentication, scopes and
    the rate limiter's per-key budget all work from the hashes."""
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# web tier\n{hash_key('s3cret')} recs:read\n{hash_key('r00t').upper()}  admin\n")
    settings = Settings(load_models=False, api_keys_file=str(keyfile), log_json=False, rate_limit_per_minute=3)
    with TestClient(create_app(settings, store=MemoryFeatureStore())) as c:
        assert c.get("/v1/catalog/items/A", headers=bearer("s3cret")).status_code == 404  # in, with recs:read
        assert c.post("/v1/events", json=EVENT, headers=bearer("s3cret")).status_code == 403  # not events:write
        assert c.post("/v1/events", json=EVENT, headers=bearer("r00t")).status_code == 202  # admin implies it
        for wrong in (hash_key("s3cret"), "S3CRET", "s3cretx"):  # the stored hash is not a key
            r = c.get("/v1/catalog/items/A", headers=bearer(wrong))
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", wrong
        # the 403 was refused before the limiter counted it: two more fit in the key's three a minute
        assert [c.get("/v1/catalog/items/A", headers=bearer("s3cret")).status_code for _ in range(2)] == [404, 404]
        limited = c.get("/v1/catalog/items/A", headers=bearer("s3cret"))
        assert limited.status_code == 429 and limited.headers["retry-after"]
        assert c.get("/v1/catalog/items/A", headers=bearer("r00t")).status_code == 404  # another key, its own budget


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECSVC_API_KEYS_FILE: cannot read"):
        create_app(Settings(load_models=False, api_keys_file=str(tmp_path / "absent")))


def test_open_access_warns_in_a_json_log_line_and_allows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    app = create_app(Settings(load_models=False, open_access=True, log_json=True), store=MemoryFeatureStore())
    warnings = [r for r in json_lines(capsys.readouterr().err) if r["level"] == "warning"]
    assert len(warnings) == 1 and "OPEN ACCESS" in str(warnings[0]["msg"]) and warnings[0]["logger"] == "recsvc.app"
    with TestClient(app) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 202
        assert c.delete("/v1/customers/c1", headers=bearer("anything")).status_code == 200
    quiet = create_app(Settings(load_models=False, api_keys=KEYS, log_json=True), store=MemoryFeatureStore())
    assert quiet and not [r for r in json_lines(capsys.readouterr().err) if r["level"] == "warning"]


def test_lifespan_opens_the_embedded_store_with_a_warning_and_closes_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[MemoryFeatureStore] = []
    closed: list[MemoryFeatureStore] = []

    class Recording(MemoryFeatureStore):
        def __init__(self, **kw: object) -> None:
            super().__init__(**kw)  # type: ignore[arg-type]
            opened.append(self)

        async def close(self) -> None:
            closed.append(self)
            await super().close()

    monkeypatch.setattr(recsvc.lifespan, "MemoryFeatureStore", Recording)
    app = create_app(Settings(load_models=False, api_keys=KEYS, log_json=True))
    assert not opened  # nothing is opened before startup
    with TestClient(app) as c:
        # no model loading configured: readiness needs the store only, and lists every family as not loaded
        assert c.get("/ready").json() == {
            "status": "ready", "store": "memory", "store_ok": True, "required": [], "missing": [],
            "models": {"recsvc-recommender": None, "recsvc-segments": None, "recsvc-propensity": None}}
        assert c.post("/v1/events", json=EVENT, headers=bearer("writer")).status_code == 202
        assert not closed
    assert len(opened) == 1 and closed == opened
    lines = json_lines(capsys.readouterr().err)
    assert any(r["level"] == "warning" and str(r["msg"]).startswith("embedded in-process store: data is not shared "
                                                                     "or persisted") for r in lines)


def test_a_store_handed_in_is_not_closed() -> None:
    store = MemoryFeatureStore()
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    store.close = close  # type: ignore[method-assign]
    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=store)) as c:
        assert c.get("/ready").status_code == 200
    assert not closed


class PerKeyBudget:
    """A two-request budget per key: enough to show the hook sees who calls and that its refusal is a 429."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def check(self, principal: Principal, scope: str) -> None:
        self.calls[principal.key_id] = self.calls.get(principal.key_id, 0) + 1
        if self.calls[principal.key_id] > 2:
            raise RateLimited(f"key over its budget for {scope}", retry_after_s=7)


def test_rate_limit_hook() -> None:
    limiter = PerKeyBudget()
    app = create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=MemoryFeatureStore(), rate_limiter=limiter)
    with TestClient(app) as c:
        codes = [c.post("/v1/events", json=EVENT, headers=bearer("writer")).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        r = c.post("/v1/events", json=EVENT, headers=bearer("writer"))
        assert r.headers["retry-after"] == "7" and r.json()["error"] == "rate_limited"
        assert c.post("/v1/events", json=EVENT, headers=bearer("ops")).status_code == 202  # another key, own budget
        assert c.post("/v1/events", json=EVENT, headers=bearer("nope")).status_code == 401  # auth comes first
        assert c.get("/health").status_code == 200  # open routes are not limited
    assert limiter.calls == {hash_key("writer")[:12]: 4, hash_key("ops")[:12]: 1}


def test_schema_documents_bodies_errors_and_enums() -> None:
    """/schema: the raw-body routes have their request body, every guarded route the guard's answers, the shared error
    shape, and content's channel and slot their allowed values (the slots as configured)."""
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, content_slots=("hero", "promo_bar"))
    with TestClient(create_app(settings, store=MemoryFeatureStore())) as c:
        doc = c.get("/schema/openapi.json").json()
        assert c.post("/v1/events", json=EVENT, headers=bearer("writer")).status_code == 202  # raw body still read
    paths = doc["paths"]

    def body(path: str, method: str) -> Any:
        rb = paths[path][method]["requestBody"]
        assert rb["required"] is True and rb["description"]
        return rb["content"]["application/json"]["schema"]

    events = body("/v1/events", "post")
    one, many = sorted(events["anyOf"], key=lambda s: s.get("type") == "array")
    assert many["items"] == one and one["title"] == "Event" and "item_id" in one["properties"]
    assert "view" in one["properties"]["type"]["enum"] and "$ref" not in str(events)  # self-contained
    items = body("/v1/catalog/items", "put")
    assert {"array", "object"} == {s.get("type") for s in items["anyOf"]}
    content = body("/v1/catalog/content", "put")
    assert "slots" in str(content) and "content_id" in str(content) and "$ref" not in str(content)

    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "detail", "field"}
    guarded = [(p, m, op) for p, item in paths.items() for m, op in item.items()
               if isinstance(op, dict) and op.get("security")]
    assert len(guarded) > 15
    for path, method, op in guarded:
        for status in ("401", "403", "429"):
            answer = op["responses"].get(status)
            assert answer and answer["content"]["application/json"]["schema"] == error_ref, (method, path, status)
        if "400" in op["responses"]:  # the service's error shape, not Litestar's exception body
            assert op["responses"]["400"]["content"]["application/json"]["schema"] == error_ref, (method, path)
    for path, method, statuses in [("/v1/events", "post", {"400", "413", "422", "503"}),
                                   ("/v1/catalog/items", "put", {"400", "413", "422", "503"}),
                                   ("/v1/catalog/content", "put", {"400", "413", "422", "503"}),
                                   ("/v1/catalog/items/{item_id}", "get", {"404", "503"}),
                                   ("/v1/catalog/content/{content_id}", "get", {"404", "503"}),
                                   ("/v1/items/{item_id}/similar", "get", {"400", "404"}),
                                   ("/v1/customers/{customer_id}/recommendations", "get", {"400"})]:
        assert statuses <= set(paths[path][method]["responses"]), (method, path)
    assert "401" not in paths["/health"]["get"]["responses"]  # open routes: no guard answers
    assert set(paths["/ready"]["get"]["responses"]) == {"200", "503"}

    params = {q["name"]: q["schema"] for q in paths["/v1/customers/{customer_id}/content"]["get"]["parameters"]}
    assert set(params["channel"]["enum"]) - {None} == {"web", "app", "email", "sms", "store", "call_center", "social"}
    assert params["slot"]["enum"] == ["hero", "promo_bar"]
    recs = {q["name"]: q["schema"] for q in paths["/v1/customers/{customer_id}/recommendations"]["get"]["parameters"]}
    assert recs["country"]["maxLength"] == 64 and recs["country"]["pattern"]


def test_the_scope_check_reads_the_route_handler_without_copying_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Litestar copies the route handler for every guard call; the scope check is a before-request hook instead, so
    a request copies nothing (and is still refused or let through by scope)."""
    import litestar.handlers.base

    copies: list[object] = []
    real_copy = litestar.handlers.base.copy
    monkeypatch.setattr(litestar.handlers.base, "copy", lambda x: copies.append(x) or real_copy(x))
    app = create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=MemoryFeatureStore())
    with TestClient(app) as c:
        assert c.post("/v1/events", json=EVENT, headers=bearer("writer")).status_code == 202
        assert c.post("/v1/events", json=EVENT, headers=bearer("reader")).status_code == 403
        assert c.post("/v1/events", json=EVENT).status_code == 401
    assert copies == []
