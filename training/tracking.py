"""MLflow plumbing for training jobs: where runs go, one experiment per family, one run per job, artifacts, figures.

The tracking URI is configuration (MLFLOW_TRACKING_URI); the default is a local sqlite store under mlruns/.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow
from mlflow import MlflowClient

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def resolve_uri(tracking_uri: str | None = None) -> str:
    """`tracking_uri`, else MLFLOW_TRACKING_URI, else the default; a sqlite database's directory is created."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point mlflow (tracking and registry) at `tracking_uri`, MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db.

    A sqlite store's directory is created; artifacts of new experiments go to RECSVC_ARTIFACT_ROOT when set, else
    beside a sqlite database, else under ./mlruns/artifacts for a database store (PostgreSQL).
    """
    uri = resolve_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def prepare(tracking_uri: str | None = None) -> None:
    """Open the store once (a new sqlite store's tables take seconds to create): a helper process does it while the
    main process loads the data."""
    configure(tracking_uri)


def experiment_name(family: str) -> str:
    """Experiments are `recsvc/<family>`; the registered model name may be passed too (`recsvc-segments`)."""
    name = family.removeprefix("recsvc-").strip()
    if not name or "/" in name:
        raise ValueError(f"family: expected a name like 'recommender', got {family!r}")
    return f"recsvc/{name}"


def _artifact_location(uri: str) -> str | None:
    location = os.environ.get("RECSVC_ARTIFACT_ROOT")
    if location is not None:
        return location
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, under mlruns/
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the tracking server decides
    return Path("mlruns/artifacts").resolve().as_uri()  # a database store: artifacts stay local


def _experiment(family: str) -> str:
    name = experiment_name(family)
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
    if exp.lifecycle_stage == "deleted":  # a deleted experiment keeps its name: bring it back rather than fail
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


@contextmanager
def training_run(
    family: str, params: dict[str, Any], fingerprint: str, tags: dict[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run in the family's experiment with its params, the data fingerprint and `family` as tags.

    The run ends FAILED when the body raises (and the exception propagates), FINISHED otherwise.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict, got {type(params).__name__}")
    run_tags = {"family": family, "data_fingerprint": str(fingerprint), **{k: str(v) for k, v in (tags or {}).items()}}
    with mlflow.start_run(experiment_id=_experiment(family), tags=run_tags) as run:
        mlflow.log_params({str(k): _param(v) for k, v in params.items() if v is not None})
        yield run


def log_bundle(local_dir: Path, artifact_path: str = "bundle") -> str:
    """Log every file under `local_dir` to the active run at `artifact_path`; returns the artifact URI."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise ValueError(f"local_dir: {local_dir} is not a directory")
    mlflow.log_artifacts(str(local_dir), artifact_path)
    return f"{mlflow.get_artifact_uri()}/{artifact_path}"


def log_figure(fig: Any, name: str) -> None:
    """Save a matplotlib figure as plots/<name> in the active run, then close it (jobs draw many)."""
    if not name or "/" in name:
        raise ValueError(f"name: expected a file name like 'calibration.png', got {name!r}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        mlflow.log_artifact(str(path), "plots")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a figure made with pyplot stays registered (and in memory) until closed
        pyplot.close(fig)
