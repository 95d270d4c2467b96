"""The recommender family end to end on a generated log with planted habits: `recsvc train recommender --quick` from a
Parquet file into a temporary MLflow store registers a champion whose numpy bundle recommends each customer's habit;
a rerun reproduces the metrics and stays challenger; --force overrides and says so."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from features.bundle import load_bundle
from features.offline_log import EVENT_SCHEMA
from features.scoring import History, RerankModel, recommend
from recsvc.recommend import LiveHistory, ServingRecommender
from training.cli import main
from training.data import to_ts
from training.config import load_config
from training.promote import load_champion
from training.recommender import train_recommender

DAY = 86400.0
T0 = datetime(2011, 7, 1, tzinfo=timezone.utc).timestamp()
FAMILY = "recsvc-recommender"
KEYS = ("ndcg_at_10_all", "ndcg_at_10_new", "recall_at_10_all", "recall_at_10_new", "map_at_10_all", "coverage")


def planted_log(path: Path) -> Path:
    """100 days, 80 customers in two taste groups (items a0..a11 or b0..b11); customer u has a habit item
    (its group's item u % 12) bought most days, plus random group items."""
    rng = np.random.default_rng(5)
    rows: list[dict[str, object]] = []
    for u in range(80):
        group = "ab"[u % 2]
        for day in range(100):
            ts = T0 + day * DAY + u
            if rng.random() < 0.35:
                habit = f"{group}{u % 12}"
                rows.append({"event_id": f"h{u}-{day}", "customer_id": f"u{u}", "item_id": habit, "ts": ts})
            if rng.random() < 0.2:
                rows.append({"event_id": f"r{u}-{day}", "customer_id": f"u{u}", "item_id": f"{group}{rng.integers(12)}",
                             "ts": ts + 1})
    cols: dict[str, list[object]] = {f.name: [] for f in EVENT_SCHEMA}
    for r in rows:
        full = {"person_id": r["customer_id"], "type": "purchase", "channel": "web", "quantity": 1, "value": 2.0,
                "country": "UK" if int(str(r["customer_id"])[1:]) < 40 else "FR", **r}
        for f in EVENT_SCHEMA:
            cols[f.name].append(full.get(f.name))
    pq.write_table(pa.table(cols, schema=EVENT_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_log(tmp_path_factory.mktemp("log") / "events.parquet")


def args(log_file: Path, tmp_path: Path, *extra: str) -> list[str]:
    cfg = tmp_path / "train.toml"
    cfg.write_text("validation_days = 15\n[recommender]\nals_factors = 8\nbpr_factors = 8\nlightfm_components = 8\n")
    return ["recommender", "--source", str(log_file), "--data-dir", str(tmp_path), "--split-date", "2011-09-20",
            "--end-date", "2011-10-10", "--config", str(cfg), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--quick", "--no-progress", *extra]


def test_train_register_promote_reproduce(log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(log_file, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "recsvc-recommender" in out and "champion" in out and "| rerank |" in out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champ = client.get_model_version_by_alias(FAMILY, "champion")
    run = client.get_run(champ.run_id)
    metrics = run.data.metrics
    for key in KEYS:
        assert key in metrics
    for model in ("popularity", "repeat", "als", "itemknn_bm25", "rerank"):
        assert f"{model}.ndcg_at_10_all" in metrics and f"{model}.fit_seconds" in metrics
    assert len(run.data.tags["data_fingerprint"]) == 64
    # metric@k curves: NDCG, Recall and MAP plots are artifacts of the run, and the curves agree with the metrics
    plots = {a.path for a in client.list_artifacts(champ.run_id, "plots")}
    assert plots == {"plots/ndcg_at_k.png", "plots/recall_at_k.png", "plots/map_at_k.png"}
    for plot in plots:
        png = Path(client.download_artifacts(champ.run_id, plot, str(tmp_path / "plots")))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = client.download_artifacts(champ.run_id, "evaluation.json", str(tmp_path))
    rerank = next(r for r in json.loads(Path(report).read_text())["rows"] if r["name"] == "rerank")
    for metric, key in (("ndcg", "ndcg_at_10_all"), ("recall", "recall_at_10_all"), ("map", "map_at_10_all")):
        assert rerank["all"]["curves"][metric]["10"] == pytest.approx(metrics[key], abs=1e-9)
    # LightFM's customer features: every customer of the train set has a real RFM segment as of the split
    segments = json.loads(run.data.params["train_user_segments"])
    assert set(segments) <= {"champions", "loyal", "potential", "new", "at risk", "hibernating", "lost"}
    assert sum(segments.values()) == 80 and len(segments) >= 2
    # planted habits: the re-ranker beats popularity on every item and finds the habit for most customers
    assert metrics["ndcg_at_10_all"] > metrics["popularity.ndcg_at_10_all"] + 0.2

    # same data and seed: the same metrics; an equal run stays challenger
    cfg = load_config(Path(tmp_path / "train.toml"), [], data_dir=tmp_path, source=str(log_file),
                      split_date="2011-09-20", end_date="2011-10-10", tracking_uri=uri, quick=True, progress=False)
    again = train_recommender(cfg)
    assert again.metrics == pytest.approx({k: metrics[k] for k in KEYS}, abs=1e-12)
    assert again.promotion is not None and again.promotion.alias == "challenger"
    assert client.get_model_version_by_alias(FAMILY, "champion").version == champ.version

    # --force: champion, and the summary says so
    assert main(args(log_file, tmp_path, "--force")) == 0
    assert "made champion by --force" in capsys.readouterr().out
    forced = client.get_model_version_by_alias(FAMILY, "champion")
    assert int(forced.version) == int(champ.version) + 2

    # the artifact: numpy alone, explicit id maps, recommends each customer's habit first
    found = load_champion(FAMILY, client)
    assert found is not None
    arrays, meta = load_bundle(found[0])
    model = RerankModel.from_bundle(arrays, meta)
    items = meta["item_ids"]
    assert arrays["item_factors"].shape[0] == len(items) and arrays["user_factors"].shape[0] == len(meta["user_ids"])
    purchases = np.zeros((2, len(items)))
    last = np.zeros((2, len(items)))
    for row, habit, other in ((0, "a3", "a5"), (1, "b7", "b1")):
        purchases[row, items.index(habit)] = 30
        purchases[row, items.index(other)] = 2
        last[row, items.index(habit)] = last[row, items.index(other)] = meta["trained_until"] - DAY
    h = History(purchases.copy(), purchases, last, np.array([0, -1]))
    top = recommend(model, h, meta["trained_until"], k=3)
    assert [items[i] for i in top[:, 0]] == ["a3", "b7"]
    new = recommend(model, h, meta["trained_until"], k=3, new_only=True)
    assert all(items[i][0] == "a" for i in new[0]) and all(items[i][0] == "b" for i in new[1])

    # the serving bundle: refit on all the data, each customer's candidates precomputed, in the order the numpy
    # scorer gives them (the precomputation used scikit-learn's predictor on the same trees)
    rec = ServingRecommender.from_bundle(arrays, meta)
    assert meta["trained_until"] > to_ts("2011-10-08") and meta["evaluated_split"] == to_ts("2011-09-20")
    users = meta["user_ids"]
    tops = arrays["user_top_items"]
    assert tops.shape == (len(users), 100) and (tops[:, 0] >= 0).all()
    for u in ("u3", "u10", "u41"):
        pre = rec.precomputed(u)
        assert pre is not None
        habit = f"{'ab'[int(u[1:]) % 2]}{int(u[1:]) % 12}"
        assert next(iter(pre[0])) == habit  # each customer's habit leads
    # numpy trees and scikit-learn agree on the ranking for a few customers
    ev = pq.read_table(log_file).to_pandas()
    for u in ("u3", "u10"):
        mine = ev[ev["customer_id"] == u]
        counts = mine.groupby("item_id").size()
        lasts = mine.groupby("item_id")["ts"].max()
        decay = np.power(2.0, -(meta["trained_until"] - mine["ts"]) / (120 * DAY))  # as training weighs events
        interest = (5.0 * decay).groupby(mine["item_id"]).sum()
        hist = LiveHistory({i: float(interest[i]) for i in interest.index},
                           {i: (float(counts[i]), float(lasts[i])) for i in counts.index}, mine["country"].iloc[0])
        live = rec.score_live(hist, meta["trained_until"], n=10)
        assert list(live)[:5] == list(rec.precomputed(u)[0])[:5]  # type: ignore[index]


def test_bad_input_is_a_clear_error(log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(log_file, tmp_path, "--split-date", "20/09/2011")) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(args(log_file, tmp_path, "--set", "recommender.als_factors=many")) == 2
    assert "recommender.als_factors" in capsys.readouterr().err
    assert main(args(log_file, tmp_path, "--source", str(tmp_path / "nope.parquet"))) == 2
    assert "no such file" in capsys.readouterr().err


def test_config_file_and_nested_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('seed = 3\n[recommender.event_weights]\nview = 0.5\n')
    cfg = load_config(cfg_file, ["recommender.event_weights.purchase=8", "recommender.validation_windows=2"])
    assert cfg.seed == 3 and cfg.recommender == {"event_weights": {"view": 0.5, "purchase": 8}, "validation_windows": 2}
    cfg_file.write_text('seed = "three"\n')
    with pytest.raises(ValueError, match="seed must be int"):
        load_config(cfg_file, [])
    with pytest.raises(ValueError, match="validation_windows is not a table"):
        load_config(None, ["recommender.validation_windows=2", "recommender.validation_windows.x=1"])
