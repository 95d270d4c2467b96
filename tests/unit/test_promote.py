"""MLflow tracking and the promotion gate on a temporary sqlite store: champion only when better, force says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.promote import MIN_IMPROVEMENT, PRIMARY_METRIC, load_champion, register_and_promote
from training.tracking import configure, log_bundle, resolve_uri, training_run

FAM = "recsvc-propensity"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")  # one database for the module: creating one takes seconds


@pytest.fixture
def client(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """The module's store with no `recsvc-propensity` model yet."""
    monkeypatch.delenv("RECSVC_ARTIFACT_ROOT", raising=False)
    client = configure(f"sqlite:///{store_dir}/mlflow.db")
    yield client
    try:
        client.delete_registered_model(FAM)
    except MlflowException:
        pass  # the test registered nothing


def run_with(tmp_path: Path, value: float, marker: str) -> str:
    """A finished run that logged `roc_auc` and a one-file bundle saying which run it is."""
    bundle = tmp_path / f"b-{marker}"
    bundle.mkdir()
    (bundle / "meta.json").write_text(f'{{"marker": "{marker}"}}')
    with training_run("propensity", {"lr": 0.1, "grid": [1, 2]}, f"fp-{marker}") as run:
        mlflow.log_metric("roc_auc", value)
        log_bundle(bundle)
    return run.info.run_id


def test_gate_first_worse_better_tie_forced(client: MlflowClient, tmp_path: Path) -> None:
    first = register_and_promote(FAM, run_with(tmp_path, 0.70, "a"), "bundle", {"roc_auc": 0.70}, client=client)
    assert (first.alias, first.champion_version, first.forced) == ("champion", None, False)

    worse = register_and_promote(FAM, run_with(tmp_path, 0.65, "b"), "bundle", {"roc_auc": 0.65}, client=client)
    assert worse.alias == "challenger" and worse.champion_version == first.version
    assert worse.champion_value == pytest.approx(0.70)

    tie = register_and_promote(FAM, run_with(tmp_path, 0.70 + MIN_IMPROVEMENT / 2, "c"), "bundle",
                               {"roc_auc": 0.70 + MIN_IMPROVEMENT / 2}, client=client)
    assert tie.alias == "challenger"  # a retrain on the same data does not move the alias

    better = register_and_promote(FAM, run_with(tmp_path, 0.75, "d"), "bundle", {"roc_auc": 0.75}, client=client)
    assert better.alias == "champion" and better.champion_version == first.version and "beats" in better.reason
    assert str(client.get_model_version_by_alias(FAM, "champion").version) == better.version

    forced_run = run_with(tmp_path, 0.10, "e")
    forced = register_and_promote(FAM, forced_run, "bundle", {"roc_auc": 0.10}, client=client, force=True)
    assert forced.alias == "champion" and forced.forced and "forced" in forced.reason
    assert forced.champion_version == better.version and forced.champion_value == pytest.approx(0.75)
    tags = client.get_run(forced_run).data.tags
    assert tags["promotion_forced"] == "true" and tags["promotion"].startswith("champion: forced")

    # the aliases sit on the versions each call registered, not on "the latest"
    assert str(client.get_model_version_by_alias(FAM, "champion").version) == forced.version
    assert str(client.get_model_version_by_alias(FAM, "challenger").version) == tie.version
    assert [first.version, worse.version, tie.version, better.version, forced.version] == ["1", "2", "3", "4", "5"]


def test_champion_is_compared_on_its_own_run_metric(client: MlflowClient, tmp_path: Path) -> None:
    """The gate reads the champion's value from its run, not from what a caller claims."""
    a = register_and_promote(FAM, run_with(tmp_path, 0.60, "a"), "bundle", {"roc_auc": 0.60}, client=client)
    b = register_and_promote(FAM, run_with(tmp_path, 0.55, "b"), "bundle", {"roc_auc": 0.62}, client=client)
    assert b.champion_value == pytest.approx(0.60) and b.alias == "champion" and a.alias == "champion"


def test_non_finite_metric_is_never_champion_unless_forced(client: MlflowClient, tmp_path: Path) -> None:
    nan = register_and_promote(FAM, run_with(tmp_path, 0.5, "a"), "bundle", {"roc_auc": float("nan")}, client=client)
    assert nan.alias == "challenger" and "finite" in nan.reason
    ok = register_and_promote(FAM, run_with(tmp_path, 0.5, "b"), "bundle", {"roc_auc": 0.5}, client=client)
    assert ok.alias == "champion" and ok.champion_version is None


def test_load_champion_downloads_the_champion_bundle(client: MlflowClient, tmp_path: Path) -> None:
    assert load_champion(FAM, client) is None
    first = register_and_promote(FAM, run_with(tmp_path, 0.7, "good"), "bundle", {"roc_auc": 0.7}, client=client)
    register_and_promote(FAM, run_with(tmp_path, 0.6, "worse"), "bundle", {"roc_auc": 0.6}, client=client)
    got = load_champion(FAM, client, tmp_path / "dl")
    assert got is not None
    path, version = got
    assert (path / "meta.json").read_text() == '{"marker": "good"}' and str(version.version) == first.version


def test_bad_input_names_the_field(client: MlflowClient, tmp_path: Path) -> None:
    run_id = run_with(tmp_path, 0.7, "a")
    with pytest.raises(ValueError, match="family"):
        register_and_promote("recsvc-nope", run_id, "bundle", {"roc_auc": 0.7}, client=client)
    with pytest.raises(ValueError, match="roc_auc"):
        register_and_promote(FAM, run_id, "bundle", {"auc": 0.7}, client=client)
    with pytest.raises(ValueError, match="metrics.roc_auc"):
        register_and_promote(FAM, run_id, "bundle", {"roc_auc": "high"}, client=client)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="artifact_path"):
        register_and_promote(FAM, run_id, "", {"roc_auc": 0.7}, client=client)
    with pytest.raises(ValueError, match="family"):
        with training_run("", {}, "fp"):
            pass
    assert set(PRIMARY_METRIC) == {"recsvc-recommender", "recsvc-segments", "recsvc-propensity"}


def test_training_run_logs_params_fingerprint_and_failure(client: MlflowClient, store_dir: Path) -> None:
    with training_run("segments", {"k": 3, "skip": None, "long": "x" * 7000}, "abc123", {"source": "file"}) as run:
        pass
    got = client.get_run(run.info.run_id)
    assert got.data.tags["data_fingerprint"] == "abc123" and got.data.tags["source"] == "file"
    assert got.data.params["k"] == "3" and "skip" not in got.data.params and len(got.data.params["long"]) == 6000
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "recsvc/segments" and exp.artifact_location == (store_dir / "artifacts").as_uri()
    with pytest.raises(RuntimeError):
        with training_run("segments", {}, "abc123") as failed:
            raise RuntimeError("boom")
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
    assert client.get_run(failed.info.run_id).info.experiment_id == got.info.experiment_id


def test_default_tracking_uri_is_local_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == "sqlite:///mlruns/mlflow.db" and (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/x.db")
    assert resolve_uri() == f"sqlite:///{tmp_path}/env/x.db" and (tmp_path / "env").is_dir()
    assert resolve_uri("postgresql://u@h/db") == "postgresql://u@h/db"  # an explicit URI wins
