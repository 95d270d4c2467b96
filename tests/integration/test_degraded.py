"""Degraded mode against a real Redis that is stopped, then slowed, then back: recommendations and similar items keep
answering from the model and the popularity snapshots (marked degraded, within the budget); ingestion refuses with 503
and Retry-After and stores nothing it cannot keep."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar.testing import AsyncTestClient

from recsvc.app import create_app
from recsvc.metrics import REGISTRY
from recsvc.settings import Settings
from tests.recs_fixtures import ITEMS, category, registry_with_bundle

KEYS = "reader=recs:read,writer=events:write,admin=admin"
READ = {"Authorization": "Bearer reader"}
WRITE = {"Authorization": "Bearer writer"}
ADMIN = {"Authorization": "Bearer admin"}
BUDGET_S = 0.25  # a degraded answer must still come quickly (the read timeout is 50 ms)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, so it can be stopped and slowed without touching anyone else's."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/ensure-redis.sh installs it)")
        self.binary, self.root, self.port = binary, root, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def timed_recs(c: AsyncTestClient, customer: str) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    r = await c.get(f"/v1/customers/{customer}/recommendations", params={"k": 3}, headers=READ)
    elapsed = time.perf_counter() - t
    assert r.status_code == 200, r.text
    return r.json(), elapsed


async def test_redis_stopped_slow_and_back(private_redis: PrivateRedis, tmp_path: Path) -> None:
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, redis_url=private_redis.url,
                        redis_prefix="deg", redis_timeout_s=0.05)
    app = create_app(settings, models=registry_with_bundle(tmp_path))
    async with AsyncTestClient(app) as c:
        r = await c.put("/v1/catalog/items", json=[{"item_id": i, "categories": [category(i)]} for i in ITEMS],
                        headers=ADMIN)
        assert r.status_code == 200
        ok = await c.post("/v1/events", json={"type": "purchase", "channel": "web", "customer_id": "b1",
                                              "item_id": "I19", "context": {"country": "GB"}}, headers=WRITE)
        assert ok.status_code == 202
        healthy, _ = await timed_recs(c, "u1")
        assert healthy["degraded"] is False
        cold, _ = await timed_recs(c, "stranger")  # fills the popularity snapshot
        assert cold["items"][0]["item_id"] == "I19"

        private_redis.stop()
        down, elapsed = await timed_recs(c, "u1")
        assert down["degraded"] is True and elapsed < BUDGET_S
        assert [e["item_id"] for e in down["items"]] == [e["item_id"] for e in healthy["items"]]  # the model's list
        cold_down, _ = await timed_recs(c, "stranger")
        assert cold_down["degraded"] is True and cold_down["items"][0]["item_id"] == "I19"  # the last snapshot
        refused = await c.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "b1",
                                                   "item_id": "I01", "event_id": "while-down"}, headers=WRITE)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"] == "store_unavailable"
        assert (await c.get("/ready")).status_code == 503
        assert (await c.get("/health")).status_code == 200

        private_redis.start()  # back, empty (no persistence in this test server)
        for _ in range(50):
            back, _ = await timed_recs(c, "u1")
            if not back["degraded"]:
                break
            await asyncio.sleep(0.05)
        assert back["degraded"] is False
        again = await c.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "b1",
                                                 "item_id": "I01", "event_id": "while-down"}, headers=WRITE)
        assert again.status_code == 202 and again.json()["accepted"] == 1  # the refused event was never stored

        # slow: the server blocks for a second; answers give up on it after the read timeout
        slow = subprocess.Popen(["redis-cli", "-p", str(private_redis.port), "DEBUG", "SLEEP", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(0.1)
        try:
            during, elapsed = await timed_recs(c, "u1")
            assert during["degraded"] is True and elapsed < BUDGET_S
        finally:
            slow.wait()


async def timed_similar(c: AsyncTestClient, item: str) -> tuple[int, dict[str, Any], float]:
    t = time.perf_counter()
    r = await c.get(f"/v1/items/{item}/similar", params={"k": 3}, headers=READ)
    return r.status_code, r.json(), time.perf_counter() - t


def similar_ids(answer: dict[str, Any]) -> list[str]:
    return [e["item_id"] for e in answer["items"]]


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_similar_items_degrade_with_redis_stopped(private_redis: PrivateRedis, tmp_path: Path) -> None:
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, redis_url=private_redis.url,
                        redis_prefix="sim", redis_timeout_s=0.05)
    catalog = [{"item_id": i, "categories": [category(i)]} for i in ITEMS] + [{"item_id": "NEW1", "categories": ["c1"]}]
    async with AsyncTestClient(create_app(settings, models=registry_with_bundle(tmp_path))) as c:
        assert (await c.put("/v1/catalog/items", json=catalog, headers=ADMIN)).status_code == 200
        status, known, _ = await timed_similar(c, "I01")
        assert (status, similar_ids(known), known["degraded"]) == (200, ["I00", "I02", "I03"], False)
        assert (await timed_similar(c, "GONE"))[0] == 404  # nobody knows it, and the store says so

        # down before any popularity was read: an item only the store could describe gets the model's popularity
        private_redis.stop()
        degraded_before = counted("recsvc_degraded_total", surface="similar")
        fallbacks_before = counted("recsvc_fallbacks_total", surface="similar", reason="degraded")
        status, blind, elapsed = await timed_similar(c, "NOT-IN-SNAPSHOT")
        assert status == 200 and blind["degraded"] is True and elapsed < BUDGET_S, blind
        assert similar_ids(blind) == ["I00", "I01", "I02"]  # the bundle's popularity: I00 most bought when trained
        assert all(e["reasons"] == ["popular"] for e in blind["items"])
        assert blind["model"] == "recsvc-recommender" and blind["model_version"] == "1"
        assert counted("recsvc_degraded_total", surface="similar") == degraded_before + 1
        assert counted("recsvc_fallbacks_total", surface="similar", reason="degraded") == fallbacks_before + 1
        # the model knows I01: no store read is needed, the answer is the healthy one
        status, known_down, elapsed = await timed_similar(c, "I01")
        assert (status, similar_ids(known_down), known_down["degraded"]) == (200, similar_ids(known), False)
        assert elapsed < BUDGET_S
        # in the catalog snapshot but unknown to the model, no popularity snapshot: same category, model popularity
        status, new_down, elapsed = await timed_similar(c, "NEW1")
        assert status == 200 and new_down["degraded"] is True and elapsed < BUDGET_S
        assert similar_ids(new_down) == ["I05", "I06", "I07"]
        assert new_down["items"][0]["reasons"] == ["same_category:c1"]

        private_redis.start()  # back, empty: the items and a best seller again, then down once more
        assert (await c.put("/v1/catalog/items", json=catalog, headers=ADMIN)).status_code == 200
        bought = await c.post("/v1/events", json=[{"type": "purchase", "channel": "web", "customer_id": f"b{n}",
                                                   "item_id": "I19"} for n in range(3)], headers=WRITE)
        assert bought.status_code == 202
        status, new_up, _ = await timed_similar(c, "NEW1")  # reads the popularity snapshot
        assert status == 200 and new_up["degraded"] is False
        assert (await timed_similar(c, "GONE"))[0] == 404
        private_redis.stop()
        status, blind, elapsed = await timed_similar(c, "GONE")  # it may exist: the store cannot say
        assert status == 200 and blind["degraded"] is True and elapsed < BUDGET_S
        assert similar_ids(blind)[0] == "I19" and blind["items"][0]["reasons"] == ["popular"]  # the last snapshot
        status, new_down, _ = await timed_similar(c, "NEW1")  # the snapshot in hand: the healthy answer
        assert (status, similar_ids(new_down), new_down["degraded"]) == (200, similar_ids(new_up), False)
