"""Training on a generated log with a planted structure: models find it, runs reproduce, the promotion gate holds."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.ensemble import HistGradientBoostingClassifier

from features.bundle import CorruptBundle, load_bundle, save_bundle
from features.memory_store import MemoryFeatureStore
from features.offline_log import drain
from features.propensity_model import FeatureSpec
from features.schema import Event, EventContext, Item
from training.config import TrainConfig, load_config
from training.data import build_testset, build_trainset, load_dataset, to_ts
from training.evaluation import Scores, map_at_k, metric_curves, ndcg_at_k, recall_at_k
from training.models.baselines import RepeatPurchase
from training.models.implicit_models import ALS, ItemKNN
from training.promote import register_and_promote
from training.propensity import export_trees
from training.segments import name_segment
from training.tracking import configure, training_run

DAY = 86400.0


def planted_log(data_dir: Path) -> None:
    """Two taste groups over 40 days: group A buys items a0..a9, group B buys b0..b9; c0 is a daily habit of u0."""
    rng = np.random.default_rng(3)
    t0 = datetime(2011, 9, 1, tzinfo=timezone.utc).timestamp()
    events = []
    for u in range(60):
        group = "a" if u % 2 == 0 else "b"
        for day in range(40):
            if rng.random() < 0.3:
                item = f"{group}{rng.integers(10)}"
                events.append(Event(type="purchase", channel="web", customer_id=f"u{u}", item_id=item, value=2.0,
                                    quantity=1, event_id=f"p{u}-{day}", context=EventContext(country="UK" if u < 30 else "FR"),
                                    timestamp=datetime.fromtimestamp(t0 + day * DAY + u, tz=timezone.utc)))
        if u == 0:
            events += [Event(type="purchase", channel="store", customer_id="u0", item_id="c0", event_id=f"h{d}", value=1.0,
                             timestamp=datetime.fromtimestamp(t0 + d * DAY + 7, tz=timezone.utc)) for d in range(40)]

    async def go() -> None:
        store = MemoryFeatureStore()
        await store.upsert_items([Item(item_id=f"{g}{i}", title=f"{'MUG' if g == 'a' else 'BAG'} {i}") for g in "ab" for i in range(10)])
        await store.upsert_items([Item(item_id="c0", title="COFFEE")])
        await store.ingest(events)
        await drain(store, data_dir)

    asyncio.run(go())


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("log")
    planted_log(d)
    return d


def test_models_find_the_planted_structure(log_dir: Path) -> None:
    ds = load_dataset(None, log_dir)
    split = to_ts("2011-10-01")
    train = build_trainset(ds, split)
    idx = {it: i for i, it in enumerate(train.item_ids)}
    u0, u1 = train.user_ids.index("u0"), train.user_ids.index("u1")
    rep = RepeatPurchase()
    rep.fit(train)
    assert int(np.argmax(rep.score(np.array([u0]))[0])) == idx["c0"]
    for model in (ItemKNN("bm25"), ALS(factors=8, iterations=10)):
        model.fit(train)
        s = model.score(np.array([u0, u1]))
        a_items = [idx[f"a{i}"] for i in range(10)]
        b_items = [idx[f"b{i}"] for i in range(10)]
        assert s[0, a_items].mean() > s[0, b_items].mean(), model
        assert s[1, b_items].mean() > s[1, a_items].mean(), model
    test = build_testset(ds, train, split, to_ts("2011-10-11"))
    assert len(test.users) > 20


def test_train_all_registers_promotes_and_reproduces(log_dir: Path, tmp_path: Path) -> None:
    from training.cli import main
    from training.recommender import train_recommender

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["recommender", "--data-dir", str(log_dir), "--split-date", "2011-10-01", "--end-date", "2011-10-11",
            "--tracking-uri", uri, "--quick", "--no-progress"]
    assert main(args) == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champ = client.get_model_version_by_alias("recsvc-recommender", "champion")
    metrics = client.get_run(champ.run_id).data.metrics
    for key in ("ndcg_at_10_all", "ndcg_at_10_new", "recall_at_10_all", "recall_at_10_new", "map_at_10_all", "coverage"):
        assert key in metrics
    # same data and seed: same metrics; an equal run does not replace the champion
    cfg = load_config(None, [], data_dir=log_dir, split_date="2011-10-01", end_date="2011-10-11", tracking_uri=uri, quick=True, progress=False)
    again = train_recommender(cfg)
    assert again.metrics == pytest.approx({k: metrics[k] for k in again.metrics})
    assert again.promotion is not None and again.promotion.alias == "challenger"
    assert client.get_model_version_by_alias("recsvc-recommender", "champion").version == champ.version
    # the artifact loads with numpy alone and names its items
    from training.promote import load_champion

    path, _ = load_champion("recsvc-recommender", client)  # type: ignore[misc]
    arrays, meta = load_bundle(path)
    assert set(meta["item_ids"]) >= {"a0", "b0", "c0"} and arrays["item_factors"].shape[0] == len(meta["item_ids"])


def test_promotion_gate(tmp_path: Path) -> None:
    client = configure(f"sqlite:///{tmp_path}/m.db")
    runs = []
    for value in (0.5, 0.4, 0.6, 0.3):
        with training_run("test", {}, "fp") as run:
            import mlflow

            mlflow.log_metric("roc_auc", value)
            runs.append(run.info.run_id)
    fam = "recsvc-propensity"
    first = register_and_promote(fam, runs[0], "bundle", {"roc_auc": 0.5}, client=client)
    worse = register_and_promote(fam, runs[1], "bundle", {"roc_auc": 0.4}, client=client)
    better = register_and_promote(fam, runs[2], "bundle", {"roc_auc": 0.6}, client=client)
    forced = register_and_promote(fam, runs[3], "bundle", {"roc_auc": 0.3}, client=client, force=True)
    assert [first.alias, worse.alias, better.alias, forced.alias] == ["champion", "challenger", "champion", "champion"]
    assert better.champion_value == pytest.approx(0.5) and "forced" in forced.reason and forced.forced
    assert str(client.get_model_version_by_alias(fam, "challenger").version) == worse.version


def test_bundle_round_trip_and_corruption(tmp_path: Path) -> None:
    save_bundle(tmp_path, {"x": np.arange(5.0)}, {"item_ids": ["a", "杯"]})
    arrays, meta = load_bundle(tmp_path)
    assert arrays["x"].tolist() == [0, 1, 2, 3, 4] and meta["item_ids"] == ["a", "杯"]
    with open(tmp_path / "arrays.npz", "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x01")
    with pytest.raises(CorruptBundle):
        load_bundle(tmp_path)
    with pytest.raises(TypeError):
        save_bundle(tmp_path / "o", {"ids": np.array(["a", None], dtype=object)}, {})


def test_numpy_trees_equal_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    x[rng.random(x.shape) < 0.05] = np.nan
    y = ((np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])) > 0).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    assert np.allclose(export_trees(clf).predict_proba(x), clf.predict_proba(x)[:, 1], atol=1e-6)


def test_feature_spec_encodes_unknown_as_missing() -> None:
    spec = FeatureSpec({"offer.type": ["bar", "coffee"]}, {"age": ["21", "31"]}, ["temperature"])
    x = spec.encode([{"offer.type": "coffee", "age": "31", "temperature": 55}, {"offer.type": "spa", "age": "99"}])
    assert x[0].tolist() == [0, 1, 1, 55]
    assert x[1, :2].tolist() == [0, 0] and np.isnan(x[1, 2]) and np.isnan(x[1, 3])


@pytest.mark.parametrize(("rfm", "name"), [((5, 5, 5), "champions"), ((3, 5, 2), "loyal"), ((5, 1, 1), "new"),
                                          ((4, 2, 3), "potential"), ((2, 4, 4), "at risk"), ((2, 1, 1), "hibernating"),
                                          ((1, 2, 5), "lost")])
def test_rfm_segment_rules(rfm: tuple[int, int, int], name: str) -> None:
    assert name_segment(*rfm) == name


def test_config_rejects_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family.key=value"):
        load_config(None, ["als=3"])
    (tmp_path / "c.toml").write_text('split_date = "2011-10-01"\n[recommender]\nals_factors = 8\n')
    cfg = load_config(tmp_path / "c.toml", ["recommender.knn_k=20"])
    assert cfg.split_date == "2011-10-01" and cfg.recommender == {"als_factors": 8, "knn_k": 20}
    assert isinstance(cfg, TrainConfig)


@pytest.mark.redis
def test_segments_publish_traits_to_redis(log_dir: Path, tmp_path: Path, redis_url: str, redis_prefix: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from features.redis_store import RedisFeatureStore
    from training.segments import SEGMENTS, train_segments

    monkeypatch.setenv("RECSVC_REDIS_PREFIX", redis_prefix)
    cfg = load_config(None, ["segments.horizon_days=4"], data_dir=log_dir, tracking_uri=f"sqlite:///{tmp_path}/m.db",
                      quick=True, progress=False)
    cfg.publish_redis_url = redis_url
    result = train_segments(cfg)
    assert set(result.sizes) == set(SEGMENTS) and sum(result.sizes.values()) == 60
    assert 0.0 <= result.metrics["churn_auc"] <= 1.0 or np.isnan(result.metrics["churn_auc"])

    async def read() -> dict[str, str]:
        store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
        await store.set_traits({})  # no-op, exercises the empty path
        from features.schema import Event

        await store.ingest([Event(type="view", channel="web", customer_id="u0", item_id="a1")])
        p = await store.profile("u0")
        await store.close()
        assert p is not None
        return p.traits

    traits = asyncio.run(read())
    assert traits["segment"] == result.traits["u0"]["segment"] and float(traits["churn_risk"]) >= 0.0


def test_metric_curves_by_hand() -> None:
    # ranked [7, 3, 9], relevant {3, 9, 5}: hits at ranks 2 and 3
    c = metric_curves([7, 3, 9], {3, 9, 5}, 4)
    d2, d3 = 1 / np.log2(3), 1 / np.log2(4)
    ideal = [1.0, 1.0 + d2, 1.0 + d2 + d3, 1.0 + d2 + d3]
    np.testing.assert_allclose(c[0], [0.0, d2 / ideal[1], (d2 + d3) / ideal[2], (d2 + d3) / ideal[3]])
    np.testing.assert_allclose(c[1], [0.0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(c[2], [0.0, (1 / 2) / 2, (1 / 2 + 2 / 3) / 3, (1 / 2 + 2 / 3) / 3])
    for k in range(1, 5):  # the same as the single-k functions
        assert c[:, k - 1] == pytest.approx([ndcg_at_k([7, 3, 9], {3, 9, 5}, k), recall_at_k([7, 3, 9], {3, 9, 5}, k),
                                             map_at_k([7, 3, 9], {3, 9, 5}, k)])
    assert not metric_curves([1, 2], set(), 3).any()


def _doc_copy(tmp_path: Path) -> tuple[Path, str]:
    original = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    path = tmp_path / "evaluation.md"
    path.write_text(original, encoding="utf-8")
    return path, original


def _outside(text: str) -> str:
    """The text with every generated block emptied: what the writer must leave as it was."""
    return re.sub(r"(<!-- (\w+):start -->).*?(<!-- \2:end -->)", r"\1\3", text, flags=re.S)


def test_doc_writer_fills_each_familys_block_and_leaves_the_rest(tmp_path: Path) -> None:
    from training.docs import write_docs
    from training.propensity import PropensityResult
    from training.recommender import ModelRow, RecommenderResult
    from training.segments import SegmentsResult

    path, original = _doc_copy(tmp_path)
    cfg = TrainConfig()
    sizes = {"champions": 10, "loyal": 20, "potential": 30, "new": 5, "at risk": 15, "hibernating": 12, "lost": 8}
    seg = SegmentsResult({"churn_auc": 0.7712, "churn_brier": 0.18, "cltv_mae": 412.5, "cltv_mae_naive": 633.25,
                          "clusters": 3.0, "customers": 100.0, "churn_train_customers": 80.0, "churn_rate": 0.41,
                          "silhouette_k2": 0.31, "silhouette_k3": 0.37, "silhouette_k4": 0.29}, {}, None, "r1", sizes,
                         "ab" * 32)
    prop = PropensityResult({"roc_auc": 0.8431, "replay_acceptance": 0.7391, "replay_random": 0.557,
                             "holdout_acceptance": 0.5705,
                             "holdout_rows": 3171.0, "replay_matched_rows": 700.0}, None, "r2", "cd" * 32)
    assert write_docs(cfg, seg=seg, prop=prop, command="recsvc train all --write-docs", path=path) == [
        "segments", "propensity"]
    text = path.read_text(encoding="utf-8")
    assert _outside(text) == _outside(original)  # the structure and prose around the blocks are untouched
    results = re.search(r"<!-- results:start -->.*<!-- results:end -->", original, re.S)
    assert results is not None and results.group(0) in text  # the recommender block stays: no recommender run
    block = text[text.index("<!-- segments:start -->"):text.index("<!-- segments:end -->")]
    assert "| churn ROC AUC (`churn_auc`) | 0.7712 |" in block and "| 412.50 | 633.25 (naive" in block
    assert "| at risk | 15 | 15.0% |" in block and "k = 3" in block and "| **3** | 0.3700 |" in block
    block = text[text.index("<!-- propensity:start -->"):text.index("<!-- propensity:end -->")]
    assert "| ROC AUC (`roc_auc`) | 0.8431 | 0.5000 | >= 0.80 | yes |" in block
    assert "| 0.7391 | 0.5570 (`replay_random`) | >= 0.75 | **no** |" in block and "base rate is 0.5705" in block
    assert "`cdcdcdcdcdcdcdcd`" in block and "3171 hold-out rows" in block
    # a second run replaces its blocks in place, never appends a copy
    row = ModelRow("rerank", "champion-candidate", 1.0, *[Scores(0.2, 0.4, 0.3, 0.5, 10, {}) for _ in range(2)])
    rec = RecommenderResult([row], {}, None, "ef" * 32, beats_baselines=True)
    write_docs(cfg, rec=rec, seg=seg, prop=prop, path=path)
    again = path.read_text(encoding="utf-8")
    assert all(again.count(f"<!-- {b}:start -->") == 1 for b in ("results", "segments", "propensity"))
    assert "| rerank | champion-candidate | 0.2000 | 0.4000 |" in again and _outside(again) == _outside(original)
    # a document without the markers gets the blocks appended
    bare = tmp_path / "bare.md"
    bare.write_text("# Evaluation\n\nprose\n", encoding="utf-8")
    write_docs(cfg, prop=prop, path=bare)
    assert bare.read_text(encoding="utf-8").startswith("# Evaluation\n\nprose\n\n<!-- propensity:start -->")


def test_cli_segments_write_docs_from_the_run(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from training import docs
    from training.cli import main

    path, original = _doc_copy(tmp_path)
    monkeypatch.setattr(docs, "DOCS", path)
    monkeypatch.delenv("RECSVC_REDIS_URL", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["segments", "--data-dir", str(log_dir), "--set", "segments.horizon_days=4", "--tracking-uri", uri,
                 "--quick", "--no-progress", "--write-docs"]) == 0
    assert "wrote the segments block(s)" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(client.get_model_version_by_alias("recsvc-segments", "champion").run_id)
    m = run.data.metrics
    text = path.read_text(encoding="utf-8")
    block = text[text.index("<!-- segments:start -->"):text.index("<!-- segments:end -->")]
    assert "by `recsvc train segments --write-docs`" in block
    assert f"| churn ROC AUC (`churn_auc`) | {m['churn_auc']:.4f} |" in block
    assert f"| {m['cltv_mae']:.2f} | {m['cltv_mae_naive']:.2f} (naive" in block and "60 customers scored" in block
    assert f"k = {int(m['clusters'])}" in block and run.data.tags["data_fingerprint"][:16] in block
    assert _outside(text) == _outside(original)
    assert text.split("<!-- propensity:start -->")[1] == original.split("<!-- propensity:start -->")[1]


SMALL = ["recommender.als_factors=8", "recommender.bpr_factors=8", "recommender.lightfm_components=8",
         "recommender.rerank_trees=20", "recommender.validation_windows=3", "recommender.bpr_iterations=10",
         "recommender.lightfm_epochs=2"]


def test_a_helper_process_changes_no_number(log_dir: Path, tmp_path: Path) -> None:
    """The same job in one lane and, through the CLI, in two (a helper process takes windows, models and the "new"
    trees): the same metrics for every model and the same serving bundle, array for array."""
    from training.cli import main
    from training.promote import load_champion
    from training.recommender import train_recommender

    dates = dict(data_dir=log_dir, split_date="2011-10-01", end_date="2011-10-11")
    one_uri, two_uri = (f"sqlite:///{tmp_path}/{name}/mlflow.db" for name in ("one", "two"))
    one = train_recommender(load_config(None, SMALL, tracking_uri=one_uri, progress=False, **dates))
    argv = ["recommender", "--data-dir", str(log_dir), "--split-date", "2011-10-01", "--end-date", "2011-10-11",
            "--tracking-uri", two_uri, "--no-progress", "--workers", "2"]
    assert main([*argv, *(a for item in SMALL for a in ("--set", item))]) == 0
    bundles, metrics = [], []
    for uri in (one_uri, two_uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = load_champion("recsvc-recommender", client)
        assert found is not None
        bundles.append(load_bundle(found[0]))
        metrics.append({k: v for k, v in client.get_run(found[1].run_id).data.metrics.items() if "seconds" not in k})
    assert metrics[0] == metrics[1] and metrics[0]["rerank.ndcg_at_10_all"] == one.metrics["ndcg_at_10_all"]
    assert {f"{r.name}.ndcg_at_10_new" for r in one.rows} <= set(metrics[1])
    (a1, m1), (a2, m2) = bundles
    assert set(a1) == set(a2) and all(np.array_equal(a1[k], a2[k], equal_nan=True) for k in a1)
    assert {k: v for k, v in m1.items() if k != "created_at"} == {k: v for k, v in m2.items() if k != "created_at"}


def test_training_ranks_with_the_bundles_trees(log_dir: Path) -> None:
    """Evaluation scores candidates with scikit-learn's predictor; the bundle's numpy trees give the same top 10."""
    from features.scoring import recommend
    from training.recommender import rerank_params, validation_windows

    cfg = load_config(None, SMALL, data_dir=log_dir, progress=False)
    ds = load_dataset(None, log_dir)
    split = to_ts("2011-10-01")
    train = build_trainset(ds, split)
    from training.models.blend import Reranker

    champion = Reranker(rerank_params(cfg))
    champion.fit_ranker(validation_windows(ds, split, 10, 2, None, 120.0))
    champion.fit(train)
    users = np.arange(train.n_users)
    arrays = champion.model  # the trees as the bundle holds them, walked in numpy
    for new_only in (False, True):
        fast = champion.recommend(users, 10, new_only)
        slow = recommend(arrays, champion.history(users), train.split_ts, 10, new_only)
        assert np.array_equal(fast, slow)
    x = arrays.candidates(champion.history(users), train.split_ts, False).x
    assert np.allclose(champion.trees["all"].raw(x), arrays.ranker_all.raw(x), rtol=0, atol=1e-9)


def test_window_labels_are_membership() -> None:
    from training.models.blend import bought_in_window

    rng = np.random.default_rng(1)
    relevant = [set(rng.choice(50, size=int(rng.integers(0, 6)), replace=False).tolist()) for _ in range(30)]
    rows, items = rng.integers(0, 30, 2000), rng.integers(0, 50, 2000)
    expected = [int(i) in relevant[r] for r, i in zip(rows, items)]
    assert bought_in_window(rows, items, relevant, 50).tolist() == expected
    assert bought_in_window(np.zeros(0, np.int64), np.zeros(0, np.int64), [set()], 50).tolist() == []


def test_testset_is_each_earlier_buyers_window_purchases() -> None:
    """Anonymous people, customers with no purchase before the split and items unknown at the split are left out;
    each customer's items are a set (a repeat counts once)."""
    import pandas as pd

    from training.customers import customers_mask, is_customer
    from training.data import Dataset

    t = to_ts("2011-10-01")
    rows = [("c1", "a", t - DAY), ("c1", "a", t + DAY), ("c1", "a", t + 2 * DAY), ("c1", "b", t + DAY),
            ("c2", "b", t - DAY), ("c2", "zz", t + DAY), ("c3", "a", t + DAY), ("anonymous:x", "a", t - DAY),
            ("anonymous:x", "b", t + DAY), ("email:e", "a", t - DAY), ("email:e", "b", t + DAY),
            ("c2", "a", t + 20 * DAY), ("c4", "b", t - 2 * DAY), ("c2", "b", t + 3 * DAY)]
    events = pd.DataFrame({"user": [r[0] for r in rows], "item_id": [r[1] for r in rows], "type": "purchase",
                           "ts": [r[2] for r in rows], "quantity": 1.0, "value": 1.0, "country": "UK",
                           "event_id": [f"e{i}" for i in range(len(rows))]})
    ds = Dataset(events, pd.DataFrame(columns=["item_id", "title", "categories", "price"]), "fp", "test")
    train = build_trainset(ds, t)
    test = build_testset(ds, train, t, t + 10 * DAY)
    assert [train.user_ids[u] for u in test.users] == ["c1", "c2"] and test.users.dtype == np.int64
    assert [{train.item_ids[i] for i in r} for r in test.relevant] == [{"a", "b"}, {"b"}]
    assert customers_mask(events["user"]).tolist() == [is_customer(u) for u in events["user"]]
    empty = build_testset(ds, train, t + 30 * DAY, t + 40 * DAY)
    assert len(empty.users) == 0 and empty.relevant == []


def test_lanes_run_tasks_and_raise_their_errors() -> None:
    from training.parallel import INLINE, lanes

    calls: list[int] = []
    later = INLINE.submit(calls.append, 1)
    assert calls == []  # one lane: a task runs when its result is asked for, once
    later.result()
    later.result()
    assert calls == [1]
    with lanes(2) as lane:
        assert lane.submit(divmod, 7, 2).result() == (3, 1)
        with pytest.raises(ValueError, match="invalid literal"):
            lane.submit(int, "seven").result()
    with pytest.raises(ValueError, match="workers"):
        with lanes(0):
            pass
    # a helper that dies fails the job instead of leaving it waiting
    import os
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        with lanes(2) as lane:
            lane.submit(os._exit, 3).result()


def test_cli_refuses_a_negative_worker_count(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    assert main(["recommender", "--workers", "-1", "--no-progress"]) == 2
    assert "workers" in capsys.readouterr().err


def test_fingerprint_is_the_documented_digest() -> None:
    """sha256 of "rows|min ts|max ts|" then every sorted event id and a newline: a run's data fingerprint compares
    with earlier runs'."""
    import hashlib

    import pandas as pd

    from training.data import fingerprint

    df = pd.DataFrame({"event_id": ["b-2", "a-1", "é-3"], "ts": [3.0, 1.0, 2.0]})
    h = hashlib.sha256(b"3|1.0|3.0|")
    for eid in ("a-1", "b-2", "é-3"):
        h.update(eid.encode() + b"\n")
    assert fingerprint(df) == h.hexdigest()
