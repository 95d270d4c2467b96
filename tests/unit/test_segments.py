"""Segments: RFM rules on hand-made customers; churn and value on a planted log (those who stopped buying are at risk);
traits published to the in-process store and to a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from features.bundle import load_bundle
from features.memory_store import MemoryFeatureStore
from features.traits import publish_traits, traits_from_bundle
from training import segments as seg
from training.config import TrainConfig
from training.data import Dataset
from training.segments import SEGMENTS, SegmentsResult, customer_features, name_segment, rfm_scores, train_segments

DAY = 86400.0
T_END = 1_300_000_000.0  # the planted log ends just before this instant
Trained = tuple[SegmentsResult, set[str], dict[str, float], str]  # result, stayers, stoppers -> last day, tracking uri


def events_frame(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(user, type, days before T_END, value) -> the events frame training.data builds."""
    return pd.DataFrame({
        "user": [r[0] for r in rows], "item_id": "i1", "type": [r[1] for r in rows],
        "ts": [T_END - r[2] * DAY for r in rows], "quantity": 1.0, "value": [r[3] for r in rows], "country": "UK",
        "event_id": [f"e{i}" for i in range(len(rows))],
    })


@pytest.mark.parametrize(("rfm", "name"), [
    ((5, 5, 5), "champions"), ((4, 4, 4), "champions"), ((5, 5, 3), "loyal"), ((3, 4, 1), "loyal"),
    ((5, 1, 1), "new"), ((4, 1, 5), "new"), ((5, 2, 2), "potential"), ((3, 1, 1), "potential"),
    ((2, 5, 5), "at risk"), ((1, 3, 2), "at risk"), ((2, 2, 5), "hibernating"), ((1, 2, 5), "lost"), ((1, 1, 1), "lost"),
])
def test_rfm_segment_rules(rfm: tuple[int, int, int], name: str) -> None:
    assert name_segment(*rfm) == name


def test_rfm_rules_cover_every_score_and_reject_bad_ones() -> None:
    names = {name_segment(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)}
    assert names == set(SEGMENTS)
    with pytest.raises(ValueError, match="rfm.f"):
        name_segment(3, 0, 3)


def test_customer_features_and_quintiles_on_hand_made_customers() -> None:
    rows = [("big", "purchase", d, 100.0) for d in (1, 1.2, 10, 30, 60, 200)]  # 5 purchase days
    rows += [("big", "return", 5, 50.0), ("newbie", "purchase", 2, 20.0), ("gone", "purchase", 300, 5.0),
             ("gone", "purchase", 250, 5.0), ("anonymous:x", "purchase", 1, 999.0), ("viewer", "view", 1, 0.0)]
    rows += [(f"mid{i}", "purchase", 20.0 + i, 10.0 + i) for i in range(7)]
    f = customer_features(events_frame(rows), T_END)
    assert "anonymous:x" not in f.index and "viewer" not in f.index and len(f) == 10
    big = f.loc["big"]
    assert big["frequency"] == 5 and big["monetary"] == 550.0 and big["recency_days"] == pytest.approx(1.0)
    assert big["tenure_days"] == pytest.approx(200.0) and big["spend_90d"] == 500.0 and big["frequency_90d"] == 4
    assert big["returns"] == 1 and big["avg_basket"] == pytest.approx(110.0)
    s = rfm_scores(f)
    assert tuple(s.loc["big"]) == (5, 5, 5) and tuple(s.loc["gone"]) == (1, 5, 1)
    assert s.loc["newbie", "r"] == 5 and s.loc["newbie", "f"] == s.loc["mid0", "f"] == 1  # 8 one-purchase customers
    assert name_segment(*s.loc["big"]) == "champions" and name_segment(*s.loc["gone"]) == "at risk"
    assert name_segment(*s.loc["newbie"]) == "new"
    assert sorted(s["m"]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # gone and mid0 tie at the lowest spend


def planted_dataset(seed: int = 0) -> tuple[Dataset, set[str], dict[str, float]]:
    """400 days of weekly shoppers. 'stayers' shop to the end; 'stoppers' stop at a random day, half of them before
    the churn split (end - 90 days) so both labels exist there, the rest long before the end. Returns the stayers
    and each stopper's last shopping day (days before the end)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float, float]] = []
    stayers: set[str] = set()
    stoppers: dict[str, float] = {}
    for u in range(240):
        name = f"c{u}"
        stop = 0.0 if u % 2 == 0 else float(rng.uniform(100, 340))  # days before the end of the last purchase
        if stop == 0:
            stayers.add(name)
        else:
            stoppers[name] = stop
        amount = float(rng.uniform(10, 60))
        day = float(rng.uniform(360, 400))
        while day > stop:
            rows.append((name, "purchase", day, amount * float(rng.uniform(0.8, 1.2))))
            day -= float(rng.uniform(4, 10))
    ev = events_frame(rows)
    ds = Dataset(events=ev, catalog=pd.DataFrame(columns=["item_id", "title", "categories", "price"]),
                 fingerprint=f"planted-{seed}", source="planted")
    return ds, stayers, stoppers


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("segments")
    uri = f"sqlite:///{tmp}/mlflow.db"
    ds, stayers, stoppers = planted_dataset()
    result = train_segments(TrainConfig(tracking_uri=uri, quick=True, progress=False), ds)
    return result, stayers, stoppers, uri


def test_churn_and_value_find_the_planted_stoppers(trained: Trained) -> None:
    result, stayers, stoppers, _ = trained
    m = result.metrics
    assert m["churn_auc"] > 0.9 and m["customers"] == 240
    risk = {u: float(t["churn_risk"]) for u, t in result.traits.items()}
    assert np.mean([risk[u] for u in stoppers]) > np.mean([risk[u] for u in stayers]) + 0.5
    assert max(risk[u] for u in stayers) < 0.5
    value = {u: float(t["cltv_90d"]) for u, t in result.traits.items()}
    assert np.mean([value[u] for u in stayers]) > 5 * np.mean([value[u] for u in stoppers])
    # a constant forecast would be off by about half the stayers' spend; the model is within a tenth of it
    assert m["cltv_mae"] < 0.1 * np.mean([value[u] for u in stayers]) and m["cltv_mae_naive"] > 0
    assert {result.traits[u]["segment"] for u in stayers} <= {"champions", "loyal", "potential"}
    long_gone = {u for u, stop in stoppers.items() if stop > 250}
    assert len(long_gone) > 20 and {result.traits[u]["segment"] for u in long_gone} <= {"at risk", "hibernating", "lost"}
    assert sum(result.sizes.values()) == 240 and set(result.sizes) == set(SEGMENTS)
    assert 2 <= m["clusters"] <= 4 and all(f"silhouette_k{k}" in m for k in (2, 3, 4))


def test_run_logs_plots_and_a_bundle_that_gives_back_the_traits(trained: Trained,
                                                                 tmp_path: Path) -> None:
    result, _, _, uri = trained
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert result.promotion is not None and result.promotion.alias == "champion"
    run = client.get_run(result.run_id)
    assert run.data.tags["data_fingerprint"] == "planted-0" and run.data.metrics["churn_auc"] == result.metrics["churn_auc"]
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/segment_sizes.png",
                                                                               "plots/churn_calibration.png"}
    version = client.get_model_version_by_alias("recsvc-segments", "champion")
    path = Path(client.download_artifacts(version.run_id, "bundle", str(tmp_path)))
    arrays, meta = load_bundle(path)
    assert traits_from_bundle(arrays, meta) == result.traits
    with pytest.raises(ValueError, match="churn_risk"):
        traits_from_bundle({k: v for k, v in arrays.items() if k != "churn_risk"}, meta)


def test_bad_settings_and_short_logs_are_clear_errors(tmp_path: Path) -> None:
    ds, _, _ = planted_dataset()
    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(ValueError, match="segments.horizon_days"):
        train_segments(TrainConfig(tracking_uri=uri, progress=False, segments={"horizon_days": -5}), ds)
    with pytest.raises(ValueError, match="segments.k_mx: unknown"):
        train_segments(TrainConfig(tracking_uri=uri, progress=False, segments={"k_mx": 5}), ds)
    with pytest.raises(ValueError, match="segments.k_min"):
        train_segments(TrainConfig(tracking_uri=uri, progress=False, segments={"k_min": 5, "k_max": 3}), ds)
    few = Dataset(ds.events[ds.events["user"].isin(["c0", "c1", "c2"])], ds.catalog, "x", "tiny")
    with pytest.raises(ValueError, match="at least 10 customers"):
        train_segments(TrainConfig(tracking_uri=uri, progress=False), few)
    with pytest.raises(ValueError, match="horizon_days lower"):
        train_segments(TrainConfig(tracking_uri=uri, progress=False, segments={"horizon_days": 1000}), ds)


async def test_publish_traits_skips_erased_people_and_checks_input() -> None:
    store = MemoryFeatureStore()
    await store.erase("gone")
    traits = {f"p{i}": {"segment": "loyal", "churn_risk": "0.1000"} for i in range(5)} | {"gone": {"segment": "lost"}}
    assert await publish_traits(store, traits, chunk=2) == 5
    assert store.people[await store.resolve("p3")].hash["t:segment"] == "loyal"
    assert "gone" not in store.people
    with pytest.raises(ValueError, match="traits\\['p1'\\]"):
        await publish_traits(store, {"p1": {"churn_risk": 0.5}})  # type: ignore[dict-item]


@pytest.mark.redis
def test_traits_reach_the_redis_profile(trained: Trained, redis_url: str,
                                        redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from features.redis_store import RedisFeatureStore
    from features.schema import Event

    result = trained[0]
    monkeypatch.setenv("RECSVC_REDIS_PREFIX", redis_prefix)
    asyncio.run(seg._publish(redis_url, result.traits))

    async def read() -> dict[str, str]:
        store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
        try:
            await store.ingest([Event(type="view", channel="web", customer_id="c1", item_id="i1")])
            profile = await store.profile("c1")
        finally:
            await store.close()
        assert profile is not None
        return profile.traits

    assert asyncio.run(read()) == result.traits["c1"]
