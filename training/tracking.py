"""MLflow plumbing for training jobs: where runs go, one run per job, artifacts and figures.

The tracking URI is configuration (MLFLOW_TRACKING_URI); the default is a local sqlite store under mlruns/.
"""

from __future__ import annotations

import os
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


def configure(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment(family: str) -> str:
    name = f"recsvc/{family}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        uri = mlflow.get_tracking_uri()
        location = os.environ.get("RECSVC_ARTIFACT_ROOT")
        if location is None and uri.startswith("sqlite:///"):  # keep artifacts beside the database, under mlruns/
            location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
        elif location is None and not uri.startswith(("http://", "https://", "databricks")):
            location = Path("mlruns/artifacts").resolve().as_uri()  # a database store: artifacts stay local
        return mlflow.create_experiment(name, artifact_location=location)
    return exp.experiment_id


@contextmanager
def training_run(family: str, params: dict[str, Any], fingerprint: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    with mlflow.start_run(experiment_id=_experiment(family), tags={"family": family, "data_fingerprint": fingerprint, **(tags or {})}) as run:
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        yield run


def log_bundle(local_dir: Path, artifact_path: str = "bundle") -> str:
    mlflow.log_artifacts(str(local_dir), artifact_path)
    return f"{mlflow.get_artifact_uri()}/{artifact_path}"


def log_figure(fig: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        mlflow.log_artifact(str(path), "plots")
