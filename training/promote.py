"""Registering a run's artifact as a model version and the promotion gate: `champion` only when measurably better.

The version registered by this job is the one promoted, never "the latest"; --force overrides the gate and says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import msgspec
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

PRIMARY_METRIC = {
    "recsvc-recommender": "ndcg_at_10_all",
    "recsvc-segments": "churn_auc",
    "recsvc-propensity": "roc_auc",
}
MIN_IMPROVEMENT = 1e-4  # ties keep the champion: a retrain on the same data must not churn the alias


class PromotionResult(msgspec.Struct):
    family: str
    version: str
    alias: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    forced: bool
    reason: str


def champion(client: MlflowClient, family: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(family, "champion")
    except MlflowException:
        return None


def register_and_promote(
    family: str, run_id: str, artifact_path: str, metrics: dict[str, float], *, force: bool = False, client: MlflowClient | None = None
) -> PromotionResult:
    client = client or MlflowClient()
    metric = PRIMARY_METRIC[family]
    value = float(metrics[metric])
    try:
        client.create_registered_model(family)
    except MlflowException:
        pass  # exists
    run = client.get_run(run_id)
    version = client.create_model_version(family, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id)
    current = champion(client, family)
    current_value = None
    if current is not None and current.run_id:
        current_value = client.get_run(current.run_id).data.metrics.get(metric)
    if force:
        alias, reason = "champion", f"forced (--force): {metric} {value:.4f} vs champion {current_value}"
    elif current is None or current_value is None:
        alias, reason = "champion", "first version with this metric"
    elif value > current_value + MIN_IMPROVEMENT:
        alias, reason = "champion", f"{metric} {value:.4f} beats champion v{current.version} ({current_value:.4f})"
    else:
        alias, reason = "challenger", f"{metric} {value:.4f} does not beat champion v{current.version} ({current_value:.4f})"
    client.set_registered_model_alias(family, alias, version.version)
    client.set_model_version_tag(family, version.version, "promotion", reason)
    client.set_tag(run_id, "promotion", f"{alias}: {reason}")
    return PromotionResult(
        family=family, version=str(version.version), alias=alias, metric=metric, value=value,
        champion_version=str(current.version) if current else None, champion_value=current_value,
        forced=force, reason=reason,
    )


def load_champion(family: str, client: MlflowClient | None = None, dst: Path | None = None) -> tuple[Path, ModelVersion] | None:
    """Download the champion's artifact directory (the service uses this, through mlflow-skinny)."""
    client = client or MlflowClient()
    mv = champion(client, family)
    if mv is None:
        return None
    path = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst or tempfile.mkdtemp()))
    return Path(path), mv
