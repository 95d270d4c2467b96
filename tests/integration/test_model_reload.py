"""Champions come from a real MLflow registry: loaded at start, hot-swapped under load without a failed request (on
`POST /v1/admin/models/reload`, and by the polling loop with the Redis store), corrupt artifacts refused, and the last
good model kept while MLflow is unreachable."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from mlflow import MlflowClient

from features.memory_store import MemoryFeatureStore
from features.schema import Item
from recsvc.app import create_app
from recsvc.models import RECOMMENDER, ChampionSource, ModelRegistry
from recsvc.recommend import ServingRecommender
from recsvc.settings import Settings
from tests.recs_fixtures import ITEMS, category, write_bundle

KEYS = "reader=recs:read,admin=admin"
READ = {"Authorization": "Bearer reader"}
ADMIN = {"Authorization": "Bearer admin"}


class Registry:
    """A throwaway MLflow store (sqlite + local artifacts) and a helper to publish planted bundles as versions."""

    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.root = root
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.exp = self.client.create_experiment("recsvc/recommender", artifact_location=(root / "art").as_uri())
        self.client.create_registered_model(RECOMMENDER)

    def publish(self, shift: int, champion: bool = True) -> tuple[str, Path]:
        """Register a planted bundle as a new version; returns (version, the stored bundle directory)."""
        run = self.client.create_run(self.exp)
        bundle = write_bundle(self.root / f"b{shift}-{run.info.run_id}", version_shift=shift)
        self.client.log_artifacts(run.info.run_id, str(bundle), "bundle")
        self.client.set_terminated(run.info.run_id)
        mv = self.client.create_model_version(RECOMMENDER, f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
        if champion:
            self.client.set_registered_model_alias(RECOMMENDER, "champion", mv.version)
        stored = self.root / "art" / run.info.run_id / "artifacts" / "bundle"
        assert (stored / "arrays.npz").is_file()
        return str(mv.version), stored


async def seeded_store() -> MemoryFeatureStore:
    store = MemoryFeatureStore()
    await store.upsert_items([Item(item_id=i, categories=[category(i)]) for i in ITEMS])
    return store


def app(reg: Registry, store: MemoryFeatureStore, tmp: Path) -> Any:
    settings = Settings(api_keys=KEYS, log_json=False, tracking_uri=reg.uri, model_poll_s=0,
                        model_cache_dir=tmp / "cache")
    return create_app(settings, store=store)


async def first_item(c: AsyncTestClient, customer: str = "u1") -> tuple[int, str | None, str | None]:
    r = await c.get(f"/v1/customers/{customer}/recommendations", params={"k": 3}, headers=READ)
    if r.status_code != 200:
        return r.status_code, None, None
    body = r.json()
    return 200, body["model_version"], body["items"][0]["item_id"] if body["items"] else None


async def test_champion_loads_at_start_and_swaps_under_load(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1, _ = reg.publish(shift=0)
    async with AsyncTestClient(app(reg, await seeded_store(), tmp_path)) as c:
        assert await first_item(c) == (200, v1, "I03")
        ready = await c.get("/ready")
        assert ready.status_code == 200, ready.text
        v2, _ = reg.publish(shift=1)  # u1's list rotated: I08 first
        assert await first_item(c) == (200, v1, "I03")  # not before a reload (polling is off here)

        async def hammer() -> list[tuple[int, str | None, str | None]]:
            return [await first_item(c) for _ in range(25)]

        results = await asyncio.gather(*[hammer() for _ in range(8)], c.post("/v1/admin/models/reload", headers=ADMIN))
        reload = results[-1]
        assert reload.status_code == 200 and reload.json()["report"]["loaded"] == {RECOMMENDER: v2}
        seen = [r for batch in results[:-1] for r in batch]
        assert all(status == 200 for status, _, _ in seen)  # nothing failed during the swap
        assert {(v, i) for _, v, i in seen} <= {(v1, "I03"), (v2, "I08")}  # whole models, never a mix
        assert await first_item(c) == (200, v2, "I08")
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert {m["family"]: m.get("version") for m in status["models"]}[RECOMMENDER] == v2


async def test_a_corrupt_artifact_is_refused_and_the_last_good_model_serves(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1, _ = reg.publish(shift=0)
    async with AsyncTestClient(app(reg, await seeded_store(), tmp_path)) as c:
        assert (await first_item(c))[1] == v1
        v2, stored = reg.publish(shift=1)
        npz = stored / "arrays.npz"  # one flipped byte in the new version's arrays
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
        r = (await c.post("/v1/admin/models/reload", headers=ADMIN)).json()
        assert RECOMMENDER in r["report"]["errors"] and "sha256" in r["report"]["errors"][RECOMMENDER]
        assert await first_item(c) == (200, v1, "I03")
        rec = {m["family"]: m for m in r["models"]}[RECOMMENDER]
        assert rec["version"] == v1 and f"v{v2} refused" in rec["last_error"]


async def test_mlflow_unreachable_keeps_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path)
    v1, _ = reg.publish(shift=0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    source = ChampionSource(reg.uri, tmp_path / "cache")
    registry = ModelRegistry(source, {RECOMMENDER: ServingRecommender.from_bundle}, families=(RECOMMENDER,))
    settings = Settings(api_keys=KEYS, log_json=False, model_poll_s=0)
    async with AsyncTestClient(create_app(settings, store=await seeded_store(), models=registry)) as c:
        assert (await first_item(c))[1] == v1
        source.tracking_uri = "http://127.0.0.1:9"  # the tracking server went away
        r = (await c.post("/v1/admin/models/reload", headers=ADMIN)).json()
        assert "registry" in r["report"]["errors"][RECOMMENDER]
        assert await first_item(c) == (200, v1, "I03")


async def test_no_champion_yet_serves_fallbacks_and_is_not_ready(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    store = await seeded_store()
    async with AsyncTestClient(app(reg, store, tmp_path)) as c:
        status, version, _ = await first_item(c)
        assert status == 200 and version is None
        assert (await c.get("/ready")).status_code == 503
        v1, _ = reg.publish(shift=0)
        await c.post("/v1/admin/models/reload", headers=ADMIN)
        assert await first_item(c) == (200, v1, "I03")
        assert (await c.get("/ready")).status_code == 200


async def test_polling_swaps_in_a_new_champion_under_load_with_the_redis_store(tmp_path: Path, redis_url: str,
                                                                                redis_prefix: str) -> None:
    reg = Registry(tmp_path)
    v1, _ = reg.publish(shift=0)
    settings = Settings(api_keys=KEYS, log_json=False, tracking_uri=reg.uri, model_poll_s=0.2,
                        model_cache_dir=tmp_path / "cache", redis_url=redis_url, redis_prefix=redis_prefix,
                        redis_timeout_s=2.0, rate_limit_per_minute=0)  # the hammering below is not what is tested
    async with AsyncTestClient(create_app(settings)) as c:
        items = [{"item_id": i, "categories": [category(i)]} for i in ITEMS]
        assert (await c.put("/v1/catalog/items", json=items, headers=ADMIN)).status_code == 200
        ready = (await c.get("/ready")).json()
        assert (ready["status"], ready["store"], ready["models"][RECOMMENDER]) == ("ready", "redis", v1)
        assert await first_item(c) == (200, v1, "I03")

        seen: list[tuple[int, str | None, str | None]] = []
        stop = asyncio.Event()

        async def hammer() -> None:
            while not stop.is_set():
                seen.append(await first_item(c))
                await asyncio.sleep(0)  # the test client blocks this loop per request (the app runs in its own)

        workers = [asyncio.create_task(hammer()) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)  # a few polls that find nothing new
            v2, _ = await asyncio.to_thread(reg.publish, 1)  # promoted in MLflow while requests are in flight
            deadline = time.monotonic() + 30
            while not any(v == v2 for _, v, _ in seen):
                assert time.monotonic() < deadline, "the poller never loaded the new champion"
                await asyncio.sleep(0.05)
            after = len(seen)
            while len(seen) < after + 20:  # and it keeps serving
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert all(status == 200 for status, _, _ in seen)  # no request failed during the swap
        assert {(v, i) for _, v, i in seen} == {(v1, "I03"), (v2, "I08")}  # both served, whole models, never a mix
        first_v2 = next(n for n, (_, v, _) in enumerate(seen) if v == v2)
        assert all(v == v2 for _, v, _ in seen[first_v2 + 8:])  # once swapped, no way back (bar requests in flight)
        assert await first_item(c) == (200, v2, "I08")
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert {m["family"]: m.get("version") for m in status["models"]}[RECOMMENDER] == v2
        assert status["last_check"] is not None
