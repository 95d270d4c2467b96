"""MLflow on PostgreSQL (the production tracking store): a real `recsvc train all` run into it (runs, metrics, plots,
registered versions, the gate, the champion bundles read back), and the register/promote primitives on their own.

A temporary database is created on the server of RECSVC_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) and dropped after. Without a server the tests skip, unless
RECSVC_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ADMIN = os.environ.get("RECSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("RECSVC_REQUIRE_POSTGRES") == "1"
pytestmark = pytest.mark.postgres
DAY = 86400.0


def _psycopg2() -> ModuleType:
    try:
        return importlib.import_module("psycopg2")
    except ImportError as exc:
        if REQUIRED:
            pytest.fail(f"RECSVC_REQUIRE_POSTGRES=1 but psycopg2 is not installed: {exc}")
        pytest.skip(f"psycopg2 not installed: {exc}")


@pytest.fixture
def pg_uri() -> Iterator[str]:
    psycopg2 = _psycopg2()
    name = f"recsvc_test_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg2.connect(ADMIN, connect_timeout=2)
    except psycopg2.OperationalError as exc:
        if REQUIRED:
            pytest.fail(f"RECSVC_REQUIRE_POSTGRES=1 but no PostgreSQL answers at {ADMIN}: {exc}")
        pytest.skip(f"no PostgreSQL at {ADMIN} (set RECSVC_TEST_POSTGRES_URL): {exc}")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    before = mlflow.get_tracking_uri()
    try:
        yield ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{name}"
    finally:
        mlflow.set_tracking_uri(before)  # leave no global pointing at a dropped database
        mlflow.set_registry_uri(before)
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def small_log(path: Path) -> Path:
    """60 days, 40 customers in two taste groups (items a0..a7 or b0..b7), each with a habit item; half of them stop
    buying 30 days before the end (so churn has both labels)."""
    rng = np.random.default_rng(11)
    t0 = datetime(2011, 8, 1, tzinfo=timezone.utc).timestamp()
    cols: dict[str, list[object]] = {"event_id": [], "person_id": [], "customer_id": [], "type": [], "channel": [],
                                     "ts": [], "item_id": [], "quantity": [], "value": [], "country": []}
    for u in range(40):
        group, last_day = "ab"[u % 2], 60 if u % 4 < 2 else 30
        for day in range(last_day):
            for n, item in enumerate((f"{group}{u % 8}", f"{group}{rng.integers(8)}")):
                if rng.random() < (0.4 if n == 0 else 0.2):
                    for key, value in (("event_id", f"e{u}-{day}-{n}"), ("person_id", f"u{u}"),
                                       ("customer_id", f"u{u}"), ("type", "purchase"), ("channel", "web"),
                                       ("ts", t0 + day * DAY + u * 60 + n), ("item_id", item), ("quantity", 1),
                                       ("value", float(rng.uniform(2, 9))), ("country", "UK" if u < 20 else "FR")):
                        cols[key].append(value)
    pq.write_table(pa.table(cols), path)
    return path


def test_train_all_into_postgres(pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from features.bundle import load_bundle
    from training.cli import main
    from training.promote import load_champion
    from training.tracking import configure

    monkeypatch.setenv("RECSVC_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    monkeypatch.delenv("RECSVC_REDIS_URL", raising=False)  # segments publish nowhere
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log = small_log(tmp_path / "events.parquet")
    argv = ["all", "--source", str(log), "--data-dir", str(tmp_path), "--split-date", "2011-09-10",
            "--end-date", "2011-10-01", "--tracking-uri", pg_uri, "--quick", "--no-progress",
            "--config", str(_config(tmp_path)), "--set", "recommender.als_factors=8",
            "--set", "recommender.bpr_factors=8", "--set", "recommender.lightfm_components=8",
            "--set", "segments.horizon_days=20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for family in ("recsvc-recommender", "recsvc-segments", "recsvc-propensity"):
        assert family in out
    client = configure(pg_uri)
    with _psycopg2().connect(pg_uri.replace("+psycopg2", "")) as conn, conn.cursor() as cur:  # the rows are there
        cur.execute("SELECT e.name, r.status FROM runs r JOIN experiments e USING (experiment_id)")
        assert sorted(cur.fetchall()) == [(f"recsvc/{f}", "FINISHED") for f in ("propensity", "recommender", "segments")]
    keys = {"recsvc-recommender": ("ndcg_at_10_all", "ndcg_at_10_new", "recall_at_10_all", "map_at_10_all",
                                   "coverage"),
            "recsvc-segments": ("churn_auc", "cltv_mae"), "recsvc-propensity": ("roc_auc", "replay_acceptance")}
    for family, metric_keys in keys.items():
        champ = client.get_model_version_by_alias(family, "champion")
        run = client.get_run(champ.run_id)
        assert set(metric_keys) <= set(run.data.metrics) and len(run.data.tags["data_fingerprint"]) == 64
        assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
        got = load_champion(family, client, tmp_path / "dl" / family)
        assert got is not None and str(got[1].version) == str(champ.version)
        arrays, meta = load_bundle(got[0])
        assert meta["family"] == family and arrays
    rec_run = client.get_run(client.get_model_version_by_alias("recsvc-recommender", "champion").run_id)
    assert {a.path for a in client.list_artifacts(rec_run.info.run_id, "plots")} == {
        "plots/ndcg_at_k.png", "plots/recall_at_k.png", "plots/map_at_k.png"}
    assert rec_run.data.metrics["ndcg_at_10_all"] > rec_run.data.metrics["popularity.ndcg_at_10_all"]
    # the same job again: same data and seed, so no better; the gate keeps the champions, the reruns are challengers
    assert main(["recommender", *argv[1:]]) == 0
    again = client.get_model_version_by_alias("recsvc-recommender", "challenger")
    assert client.get_run(again.run_id).data.metrics["ndcg_at_10_all"] == pytest.approx(
        rec_run.data.metrics["ndcg_at_10_all"], abs=1e-12)
    assert client.get_model_version_by_alias("recsvc-recommender", "champion").run_id == rec_run.info.run_id


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "train.toml"
    cfg.write_text("validation_days = 10\n")
    return cfg


def test_run_register_promote_on_postgres(pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.promote import load_champion, register_and_promote
    from training.tracking import configure, log_bundle, training_run

    monkeypatch.setenv("RECSVC_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    client = configure(pg_uri)
    results = []
    for auc in (0.81, 0.78):
        bundle = tmp_path / f"b{auc}"
        bundle.mkdir()
        (bundle / "meta.json").write_text(f'{{"auc": {auc}}}')
        with training_run("propensity", {"max_iter": 10}, f"fp{auc}") as run:
            mlflow.log_metric("roc_auc", auc)
            log_bundle(bundle)
        metrics = {"roc_auc": auc}
        results.append(register_and_promote("recsvc-propensity", run.info.run_id, "bundle", metrics, client=client))
    assert [r.alias for r in results] == ["champion", "challenger"]
    assert client.get_run(run.info.run_id).data.tags["data_fingerprint"] == "fp0.78"
    got = load_champion("recsvc-propensity", client, tmp_path / "dl")
    assert got is not None
    path, version = got
    assert (path / "meta.json").read_text() == '{"auc": 0.81}'
    assert str(version.version) == results[0].version
    assert version.source.startswith((tmp_path / "artifacts").as_uri())
