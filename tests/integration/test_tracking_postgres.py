"""MLflow on PostgreSQL (the production tracking store): a run, a registered version and its promotion."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

psycopg2 = pytest.importorskip("psycopg2")
ADMIN = os.environ.get("RECSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_uri() -> Iterator[str]:
    name = f"recsvc_test_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg2.connect(ADMIN, connect_timeout=2)
    except psycopg2.OperationalError as exc:
        if os.environ.get("RECSVC_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL at {ADMIN}: {exc}")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    yield ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + f"/{name}"
    conn.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    conn.close()


@pytest.mark.postgres
def test_run_register_promote_on_postgres(pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.promote import load_champion, register_and_promote
    from training.tracking import configure, log_bundle, training_run

    monkeypatch.setenv("RECSVC_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    client = configure(pg_uri)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meta.json").write_text("{}")
    with training_run("propensity", {"p": 1}, "fp") as run:
        mlflow.log_metric("roc_auc", 0.81)
        log_bundle(tmp_path / "b")
    result = register_and_promote("recsvc-propensity", run.info.run_id, "bundle", {"roc_auc": 0.81}, client=client)
    assert result.alias == "champion"
    got = load_champion("recsvc-propensity", client, tmp_path / "dl")
    assert got is not None and (got[0] / "meta.json").exists()
    assert str(got[1].version) == result.version
