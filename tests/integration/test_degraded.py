"""Degraded mode against a real Redis that is stopped, then slowed, then back: recommendations keep answering from
the model and the popularity snapshots (marked degraded, within the budget); ingestion refuses with 503 and
Retry-After and stores nothing it cannot keep."""

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
