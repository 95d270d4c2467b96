"""The catalog snapshot of the serving path: a reload is read in short chunks (a failed chunk is retried) and comes
with the arrays requests need, built in the background before it is published; an upsert through this process
patches them; so a request never builds them after a catalog change. The answer goes out as pre-encoded JSON,
byte for byte what Litestar would have sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from litestar.serialization import encode_json
from litestar.testing import TestClient

from features.bundle import load_bundle
from features.memory_store import MemoryFeatureStore
from features.schema import Item
from features.store import StoreUnavailable
from recsvc.app import create_app
from recsvc import recommend_arrays
from recsvc.decisions import DecisionLogger
from recsvc.models import RECOMMENDER
from recsvc.recommend import Request
from recsvc.recommend_arrays import CatalogArrays
from recsvc.rules import load_rules
from recsvc.serving import CatalogSnapshot, RecommendationsAnswer, RecommendationService
from recsvc.settings import Settings
from tests.recs_fixtures import ITEMS, category, registry_with_bundle, write_bundle

NOW = 1_700_000_000.0


class FlakyStore(MemoryFeatureStore):
    """The in-process store; `get_items` fails every `fail_every`-th call and records chunk sizes."""

    def __init__(self, fail_every: int = 0) -> None:
        super().__init__(clock=lambda: NOW)
        self.fail_every = fail_every
        self.calls: list[int] = []

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        self.calls.append(len(item_ids))
        if self.fail_every and len(self.calls) % self.fail_every == 0:
            raise StoreUnavailable("redis: TimeoutError")
        return await super().get_items(item_ids)


def service(store: MemoryFeatureStore, tmp_path: Path) -> RecommendationService:
    return RecommendationService(lambda: store, registry_with_bundle(tmp_path), load_rules(), lambda: NOW,
                                 DecisionLogger(lambda: store))


def test_a_reload_reads_short_chunks_and_retries_a_failed_one() -> None:
    async def run() -> None:
        store = FlakyStore(fail_every=3)
        await store.upsert_items([Item(item_id=f"X{n:03d}", categories=["c"]) for n in range(250)])
        prepared: list[int] = []

        async def prepare(items: dict[str, object]) -> None:
            assert snap.items == {}  # derived data is ready before requests see the new snapshot
            prepared.append(len(items))

        snap = CatalogSnapshot(lambda: store, prepare=prepare)
        await snap.load()
        assert len(snap.items) == 250 and prepared == [250]
        assert store.calls == [100, 100, 50, 50]  # three chunks; the third failed once and was read again

    asyncio.run(run())


def test_requests_after_a_reload_or_an_upsert_build_no_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    async def run() -> None:
        store = FlakyStore()
        await store.upsert_items([Item(item_id=i, title=i, categories=[category(i)]) for i in ITEMS])
        svc = service(store, tmp_path)
        await svc.catalog.load()
        built = CatalogArrays.build

        def no_build(*args: object) -> CatalogArrays:
            raise AssertionError("catalog arrays built on the request path")

        monkeypatch.setattr(CatalogArrays, "build", no_build)
        first = await svc.decide("u1", Request("web", 5))
        assert [e.item_id for e in first.entries][:2] == ["I03", "I08"]
        upsert = [Item(item_id="I03", categories=["c0"], available=False), Item(item_id="I12", categories=["new"])]
        await store.upsert_items(upsert)
        svc.catalog.note(upsert)
        after = await svc.decide("u1", Request("web", 5))
        assert "I03" not in [e.item_id for e in after.entries]  # the upsert counts at once
        monkeypatch.setattr(CatalogArrays, "build", built)
        other = service(store, tmp_path)
        await other.catalog.load()
        fresh = await other.decide("u1", Request("web", 5))
        # a full build of the updated catalog agrees
        assert [(e.item_id, e.reasons) for e in fresh.entries] == [(e.item_id, e.reasons) for e in after.entries]

    asyncio.run(run())


def test_recommendations_are_sent_as_litestar_would_send_them(tmp_path: Path) -> None:
    store = MemoryFeatureStore()
    settings = Settings(load_models=False, api_keys="reader=recs:read", log_json=False)
    with TestClient(create_app(settings, store=store, models=registry_with_bundle(tmp_path))) as c:
        r = c.get("/v1/customers/u1/recommendations", params={"k": 3}, headers={"Authorization": "Bearer reader"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["x-request-id"]
    answer = msgspec.json.decode(r.content, type=RecommendationsAnswer)
    assert [e.item_id for e in answer.items] == ["I03", "I08", "I12"]
    assert r.content == encode_json(answer)  # Litestar's own serialization of the same answer


def test_candidates_are_kept_per_customer_until_a_new_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    made: list[object] = []
    real = recommend_arrays.candidates

    def counting(*args: object) -> object:
        made.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recommend_arrays, "candidates", counting)

    async def run() -> None:
        store = FlakyStore()
        await store.upsert_items([Item(item_id=i, title=i, categories=[category(i)]) for i in ITEMS])
        svc = service(store, tmp_path)
        await svc.catalog.load()
        old = svc.recommender()
        first = await svc.decide("u1", Request("web", 5))
        again = await svc.decide("u1", Request("web", 5))  # nothing trending: the same (empty) snapshot both times
        assert len(made) == 1 and len(svc.candidates) == 1  # the second request used what the first kept
        assert [(e.item_id, e.score, e.reasons) for e in again.entries] == [
            (e.item_id, e.score, e.reasons) for e in first.entries]
        arrays, meta = load_bundle(write_bundle(tmp_path / "v2", version_shift=1))
        svc.models.install(RECOMMENDER, "2", arrays, meta)
        out = await svc.decide("u1", Request("web", 5))
        assert out.model is not None and out.model.version == "2" and out.model is not old
        assert len(svc.candidates) == 1 and all(key[0] == "2" for key in svc._precomputed)

    asyncio.run(run())
