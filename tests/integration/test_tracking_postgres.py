"""MLflow on PostgreSQL (the production tracking store): a run, registered versions, the gate, the champion read back.

A temporary database is created on RECSVC_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432) and dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

psycopg2 = pytest.importorskip("psycopg2")
ADMIN = os.environ.get("RECSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_uri() -> Iterator[str]:
    name = f"recsvc_test_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg2.connect(ADMIN, connect_timeout=2)
    except psycopg2.OperationalError as exc:
        if os.environ.get("RECSVC_REQUIRE_POSTGRES") == "1":
            raise
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
