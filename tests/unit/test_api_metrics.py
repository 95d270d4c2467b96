"""Observability: /metrics (format, route-template latency histograms, scrape-time gauges and counters, optional
admin guard), /ready's contract, X-Request-ID, and the error and slow-request log lines."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar.testing import TestClient

from prometheus_client.parser import text_string_to_metric_families

from features.memory_store import MemoryFeatureStore
from features.schema import Item, LiveFeatures, Profile
from features.store import StoreUnavailable
from recsvc.app import create_app
from recsvc.metrics import REGISTRY
from recsvc.models import FAMILIES, RECOMMENDER, SEGMENTS, LoadedModel, ModelRegistry
from recsvc.settings import Settings
from recsvc.telemetry import Scrape
from tests.recs_fixtures import ITEMS, category, registry_with_bundle

KEYS = "reader=recs:read,admin=admin"
R = {"Authorization": "Bearer reader"}
A = {"Authorization": "Bearer admin"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def app_with(store: MemoryFeatureStore | None = None, models: ModelRegistry | None = None, **kw: object) -> TestClient:
    kw.setdefault("log_json", False)
    settings = Settings(load_models=False, api_keys=KEYS, model_poll_s=0, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, store=store or MemoryFeatureStore(), models=models))


def test_metrics_text_with_route_template_histograms() -> None:
    route = "/v1/customers/{customer_id}/profile"
    before_404 = sample("recsvc_request_seconds_count", route=route, method="GET", status="4xx")
    before_unmatched = sample("recsvc_request_seconds_count", route="<unmatched>", method="GET", status="4xx")
    with app_with() as c:
        for cid in ("a", "b", "c"):  # three ids, one route template
            assert c.get(f"/v1/customers/{cid}/profile", headers=R).status_code == 404
        assert c.get("/no/such/route").status_code == 404
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.text
        assert f'recsvc_request_seconds_bucket{{le="0.01",method="GET",route="{route}",status="4xx"}}' in text
        for name in ("recsvc_model_version", "recsvc_fallbacks_total", "recsvc_degraded_total",
                     "recsvc_decisions_logged_total", "recsvc_decisions_pending", "recsvc_ratelimit_fail_open_total",
                     "recsvc_model_load_errors_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in text, name
        om = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
    assert sample("recsvc_request_seconds_count", route=route, method="GET", status="4xx") == before_404 + 3
    unmatched = sample("recsvc_request_seconds_count", route="<unmatched>", method="GET", status="4xx")
    assert unmatched == before_unmatched + 1


def test_metrics_can_require_admin() -> None:
    with app_with(metrics_admin=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=R).status_code == 403
        assert c.get("/metrics", headers=A).status_code == 200
    with app_with() as c:
        assert c.get("/metrics").status_code == 200


@dataclass
class BrokenSource:
    """An MLflow that never answers."""

    cache_dir: Path = Path("/nonexistent")

    def champion_version(self, family: str) -> tuple[str, str | None, str] | None:
        raise RuntimeError("mlflow: connection refused")


def recommender(version: str) -> LoadedModel[object]:
    return LoadedModel(RECOMMENDER, version, None, object(), {}, time.time())


def test_ready_needs_the_recommender_when_models_load_and_metrics_follow_the_registry() -> None:
    registry = ModelRegistry(BrokenSource(), {RECOMMENDER: lambda arrays, meta: object()})  # type: ignore[arg-type]
    errors = sample("recsvc_model_load_errors_total", family=RECOMMENDER)
    with app_with(models=registry) as c:  # the lifespan's first refresh fails
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "store": "memory", "store_ok": True,
                            "models": {f: None for f in FAMILIES}, "required": [RECOMMENDER],
                            "missing": [RECOMMENDER]}
        c.get("/metrics")
        assert sample("recsvc_model_load_errors_total", family=RECOMMENDER) == errors + 1
        assert sample("recsvc_model_version", family=RECOMMENDER) == 0
        time.sleep(0.01)
        asyncio.run(registry.refresh())  # fails again: one more error
        c.get("/metrics")
        c.get("/metrics")  # nothing new between these two scrapes
        assert sample("recsvc_model_load_errors_total", family=RECOMMENDER) == errors + 2
        registry.put(recommender("7"))
        r = c.get("/ready")
        assert r.status_code == 200 and r.json()["models"][RECOMMENDER] == "7" and r.json()["missing"] == []
        c.get("/metrics")
        assert sample("recsvc_model_version", family=RECOMMENDER) == 7


class DownStore(MemoryFeatureStore):
    async def ping(self) -> bool:
        return False


def test_ready_says_the_store_is_missing() -> None:
    with app_with(store=DownStore()) as c:
        r = c.get("/ready")
        assert r.status_code == 503
        assert (r.json()["status"], r.json()["store_ok"], r.json()["missing"]) == ("unavailable", False, ["store"])
        assert c.get("/health").status_code == 200  # liveness does not depend on the store


@dataclass
class FakeDecisions:
    written: int = 0
    dropped: int = 0
    pending: int = 0


def test_scrape_advances_counters_by_what_changed() -> None:
    registry = ModelRegistry(None, {})
    registry.put(LoadedModel(SEGMENTS, "12", None, {}, {}, time.time()))
    decisions = FakeDecisions(written=5, dropped=2, pending=3)
    scrape = Scrape(lambda: registry, lambda: decisions, lambda: 4)  # type: ignore[arg-type, return-value]
    logged, dropped = sample("recsvc_decisions_logged_total"), sample("recsvc_decisions_dropped_total")
    scrape.refresh()

    def moved() -> tuple[float, float]:
        return sample("recsvc_decisions_logged_total") - logged, sample("recsvc_decisions_dropped_total") - dropped

    assert moved() == (5, 2)
    assert sample("recsvc_decisions_pending") == 3 and sample("recsvc_content_items") == 4
    assert sample("recsvc_model_version", family=SEGMENTS) == 12
    decisions.written, decisions.pending = 7, 0
    scrape.refresh()
    assert moved() == (7, 2)
    assert sample("recsvc_decisions_pending") == 0


def test_decisions_written_reach_the_metrics() -> None:
    before = sample("recsvc_decisions_logged_total")
    with app_with() as c:
        assert c.get("/v1/customers/c1/content?channel=web&slot=hero", headers=R).status_code == 200
        deadline = time.monotonic() + 5
        while sample("recsvc_decisions_logged_total") < before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            c.get("/metrics")
    assert sample("recsvc_decisions_logged_total") >= before + 1


def test_request_id_is_echoed_or_made() -> None:
    with app_with() as c:
        assert c.get("/health", headers={"X-Request-ID": "trace-42.a:b"}).headers["x-request-id"] == "trace-42.a:b"
        made = c.get("/health").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", made)
        assert c.get("/health").headers["x-request-id"] != made
        for bad in ("has space", "x" * 129, "quote\"d"):
            got = c.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{16}", got)
        assert c.get("/nowhere", headers={"X-Request-ID": "r-404"}).headers["x-request-id"] == "r-404"  # unmatched too


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class ExplodingStore(MemoryFeatureStore):
    async def profile(self, any_id: str, now: float | None = None) -> Profile | None:
        raise RuntimeError("bug")


def test_errors_and_slow_requests_are_logged_with_route_status_duration_and_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with app_with(store=ExplodingStore(), log_json=True) as c:
        capsys.readouterr()
        assert c.get("/v1/customers/c1/profile", headers={**R, "X-Request-ID": "req-500"}).status_code == 500
        assert c.get("/health").status_code == 200  # fast and fine: not logged
        lines = json_lines(capsys.readouterr().err)
    failed = [r for r in lines if r["logger"] == "recsvc.access"]
    assert len(failed) == 1 and failed[0]["level"] == "error"
    assert {k: failed[0][k] for k in ("route", "method", "status", "request_id")} == {
        "route": "/v1/customers/{customer_id}/profile", "method": "GET", "status": 500, "request_id": "req-500"}
    assert isinstance(failed[0]["duration_ms"], float)
    unhandled = [r for r in lines if r["logger"] == "recsvc.errors"]
    assert unhandled and unhandled[0]["request_id"] == "req-500" and "RuntimeError: bug" in str(unhandled[0]["exc"])

    with app_with(log_json=True, slow_request_ms=0) as c:  # every request is "slow"
        capsys.readouterr()
        c.get("/health", headers={"X-Request-ID": "slow-1"})
        lines = json_lines(capsys.readouterr().err)
    slow = [r for r in lines if r["logger"] == "recsvc.access"]
    assert len(slow) == 1 and slow[0]["level"] == "warning" and slow[0]["request_id"] == "slow-1"
    assert (slow[0]["route"], slow[0]["status"]) == ("/health", 200)


def scraped(c: TestClient, name: str, **labels: str) -> float:
    """A sample's value as GET /metrics shows it (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


class LiveDownStore(MemoryFeatureStore):
    """The live read fails, as when Redis is down or over its timeout."""

    async def live(self, any_id: str, since: float, now: float | None = None) -> LiveFeatures | None:
        raise StoreUnavailable("redis: TimeoutError")


def test_fallback_counters_in_metrics_count_each_fallback(tmp_path: Path) -> None:
    fallbacks = "recsvc_fallbacks_total"

    def moved(c: TestClient, ask: str, surface: str, reason: str) -> float:
        before = scraped(c, fallbacks, surface=surface, reason=reason)
        assert c.get(ask, headers=R).status_code == 200
        return scraped(c, fallbacks, surface=surface, reason=reason) - before

    with app_with() as c:  # no champion
        assert moved(c, "/v1/customers/x/recommendations", "recommendations", "no_model") == 1
        assert moved(c, "/v1/customers/x/content?channel=web&slot=hero", "content", "cold_start") == 1
        assert moved(c, "/v1/customers/x/content?channel=web&slot=hero", "content", "no_candidates") == 1
    store = MemoryFeatureStore()
    asyncio.run(store.upsert_items([Item(item_id=i, categories=[category(i)]) for i in ITEMS]
                                   + [Item(item_id="NEW", categories=["c1"])]))
    with app_with(store=store, models=registry_with_bundle(tmp_path)) as c:
        assert moved(c, "/v1/customers/stranger/recommendations", "recommendations", "cold_start") == 1
        assert moved(c, "/v1/customers/u1/recommendations", "recommendations", "cold_start") == 0  # personalized
        assert moved(c, "/v1/items/NEW/similar", "similar", "unknown_to_model") == 1
        assert moved(c, "/v1/items/I01/similar", "similar", "unknown_to_model") == 0
    with app_with(store=LiveDownStore(), models=registry_with_bundle(tmp_path / "b")) as c:
        degraded = scraped(c, "recsvc_degraded_total", surface="recommendations")
        assert moved(c, "/v1/customers/u1/recommendations", "recommendations", "degraded") == 1
        assert scraped(c, "recsvc_degraded_total", surface="recommendations") == degraded + 1
