"""Registering a run's artifact as a model version and the promotion gate: `champion` only when measurably better.

The version registered by this job is the one promoted, never "the latest"; --force overrides the gate and says so.
Metrics compare only on the same data: a job whose hold-out is not the champion's passes `rejudge` (the champion
measured on this job's hold-out), and a champion whose run is tagged `holdout` (its metric holds on that data only)
is never compared with a run that is not judged on the same.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
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
HOLDOUT_TAG = "holdout"  # a run tag naming the data its metrics hold on, when that is not the family's usual data


class PromotionResult(msgspec.Struct):
    family: str
    version: str
    alias: str  # "champion" or "challenger"
    metric: str
    value: float
    champion_version: str | None  # the champion before this promotion, if any
    champion_value: float | None
    forced: bool
    reason: str


def champion(client: MlflowClient, family: str) -> ModelVersion | None:
    """The version holding the `champion` alias, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(family, "champion")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _decide(
    metric: str, value: float, current: ModelVersion | None, current_value: float | None, force: bool
) -> tuple[str, str]:
    cur = f"champion v{current.version}" if current is not None else "no champion"
    cur_v = f" ({current_value:.4f})" if _finite(current_value) else ""
    if force:
        return "champion", f"forced (--force): {metric} {value:.4f} vs {cur}{cur_v}"
    if not _finite(value):
        return "challenger", f"{metric} is {value}: a version without a finite {metric} is never champion"
    if current is None:
        return "champion", f"first version: {metric} {value:.4f}"
    if not _finite(current_value):
        return "champion", f"{metric} {value:.4f}; {cur} has no finite {metric}"
    assert current_value is not None
    if value > current_value + MIN_IMPROVEMENT:
        return "champion", f"{metric} {value:.4f} beats {cur}{cur_v}"
    return "challenger", f"{metric} {value:.4f} does not beat {cur}{cur_v}"


def register_and_promote(
    family: str,
    run_id: str,
    artifact_path: str,
    metrics: dict[str, float],
    *,
    force: bool = False,
    client: MlflowClient | None = None,
    rejudge: Callable[[ModelVersion], float | None] | None = None,
) -> PromotionResult:
    """Register `{run artifact uri}/{artifact_path}` as a new version of `family` and alias THAT version.

    `champion` when its primary metric beats the current champion's (read from the champion's run) by more than
    MIN_IMPROVEMENT, or with force=True (recorded in the reason, a version tag and a run tag); `challenger` otherwise.
    `rejudge`: the current champion's primary metric on this job's own hold-out, for a job whose data differs from
    the champion's (None from it: the champion cannot be measured there, and the new version is not compared). Without
    it, a champion whose run carries a `holdout` tag the new run does not share is not compared either: the new
    version stays challenger unless forced.
    """
    if family not in PRIMARY_METRIC:
        raise ValueError(f"family: unknown model family {family!r}; expected one of {', '.join(PRIMARY_METRIC)}")
    metric = PRIMARY_METRIC[family]
    if metric not in metrics:
        got = ", ".join(metrics) or "none"
        raise ValueError(f"metrics: {family} is judged on {metric!r}, which is missing (got {got})")
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        raise ValueError(f"metrics.{metric}: expected a number, got {metrics[metric]!r}") from None
    if not artifact_path or artifact_path.startswith("/"):
        raise ValueError(f"artifact_path: expected a path relative to the run's artifacts, got {artifact_path!r}")
    client = client or MlflowClient()
    run = client.get_run(run_id)  # raises for an unknown run before anything is registered
    try:
        client.create_registered_model(family, description=f"recsvc {family.removeprefix('recsvc-')}; gate on {metric}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    current = champion(client, family)  # read before registering: the new version is compared with the old champion
    current_value = None
    apart = None  # why the champion's metric does not compare with this run's
    if current is not None and rejudge is not None:
        current_value = rejudge(current)
        if current_value is None:
            apart = f"champion v{current.version} cannot be measured on this job's hold-out"
    elif current is not None and current.run_id:
        current_run = client.get_run(current.run_id)
        current_value = current_run.data.metrics.get(metric)
        theirs, ours = current_run.data.tags.get(HOLDOUT_TAG), run.data.tags.get(HOLDOUT_TAG)
        if theirs != ours:
            apart = (f"champion v{current.version} was judged on {theirs or 'its usual data'}, this version on "
                     f"{ours or 'its usual data'}")
    version = client.create_model_version(family, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id)
    if apart is not None and not force:
        alias, reason = "challenger", f"{metric} {value:.4f} not compared: {apart} (--force to promote anyway)"
    else:
        alias, reason = _decide(metric, value, current, current_value, force)
        if rejudge is not None and current is not None:
            reason += " (champion measured on this job's hold-out)"
    client.set_registered_model_alias(family, alias, version.version)
    client.set_model_version_tag(family, version.version, "promotion", reason)
    client.set_model_version_tag(family, version.version, "artifact_path", artifact_path)
    client.set_tag(run_id, "promotion", f"{alias}: {reason}")
    client.set_tag(run_id, "model_version", f"{family}/{version.version}")
    if force:
        client.set_tag(run_id, "promotion_forced", "true")
        client.set_model_version_tag(family, version.version, "promotion_forced", "true")
    return PromotionResult(
        family=family, version=str(version.version), alias=alias, metric=metric, value=value,
        champion_version=str(current.version) if current is not None else None,
        champion_value=float(current_value) if current_value is not None else None,
        forced=force, reason=reason,
    )


def load_champion(
    family: str, client: MlflowClient | None = None, dst: Path | None = None
) -> tuple[Path, ModelVersion] | None:
    """Download the champion's artifact directory into `dst` (default a new temporary directory); None if none."""
    client = client or MlflowClient()
    mv = champion(client, family)
    if mv is None:
        return None
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=mv.source, dst_path=str(dst or tempfile.mkdtemp(prefix=f"{family}-")), tracking_uri=client.tracking_uri
    )
    return Path(path), mv
