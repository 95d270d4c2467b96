"""Customer segments from the offline log: RFM scores with named segments, behaviour clusters (k by silhouette),
churn risk (no purchase in the next 90 days) and a 90-day value forecast, both learned and judged on a time split.
Results are published to the online store as traits, so the service reads them with the live profile."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import brier_score_loss, mean_absolute_error, roc_auc_score, silhouette_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from features.bundle import save_bundle
from features.redis_store import RedisFeatureStore
from features.offer_store import publish_and_index
from training.config import TrainConfig
from training.customers import (
    CLUSTER_FEATURES,
    DAY,
    HORIZON,
    MODEL_FEATURES,
    SEGMENTS,
    customer_features,
    name_segment,
    name_segments,
    rfm_scores,
)
from training.data import Dataset, load_dataset
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

FAMILY = "recsvc-segments"
MIN_CUSTOMERS = 10
SILHOUETTE_SAMPLE = 2000  # silhouette is quadratic in rows: score k on a fixed sample


@dataclass
class SegmentsResult:
    metrics: dict[str, float]
    traits: dict[str, dict[str, str]]  # customer id -> segment, cluster, churn_risk, cltv_90d, rfm
    promotion: PromotionResult | None
    run_id: str
    sizes: dict[str, int]
    fingerprint: str = ""


FamilyResult = SegmentsResult  # the name the issue uses for a family job's result


def standardize(f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log1p of the (clipped at 0) cluster features, then z-scores; returns z, mean and scale (for the bundle)."""
    logged = np.log1p(f[CLUSTER_FEATURES].clip(lower=0).to_numpy(dtype=np.float64))
    mean, scale = logged.mean(axis=0), np.maximum(logged.std(axis=0), 1e-9)
    return (logged - mean) / scale, mean, scale


def choose_clusters(z: np.ndarray, ks: range, seed: int) -> tuple[KMeans, dict[int, float]]:
    """k-means for every k in `ks` on a sample, scored by silhouette; the best k refitted on all rows."""
    ks = range(max(ks.start, 2), min(ks.stop, len(z)))
    if len(ks) == 0:
        raise ValueError(f"segments.k_max: needs at least 3 customers and k_max >= 2 (have {len(z)} customers)")
    sample = np.random.default_rng(seed).choice(len(z), min(len(z), SILHOUETTE_SAMPLE), replace=False)
    sil: dict[int, float] = {}
    for k in ks:
        labels = KMeans(k, n_init=4, random_state=seed).fit_predict(z[sample])
        sil[k] = float(silhouette_score(z[sample], labels)) if len(set(labels)) > 1 else -1.0
    best = max(sil, key=lambda k: sil[k])
    return KMeans(best, n_init=4, random_state=seed).fit(z), sil


def churn_labels(events: pd.DataFrame, t0: float, horizon: float) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Features at t0 of customers who bought before t0; churned = no purchase in [t0, t0 + horizon); spend there."""
    x = customer_features(events, t0, horizon)
    later = events[(events["ts"] >= t0) & (events["ts"] < t0 + horizon) & (events["type"] == "purchase")]
    spend = later.groupby("user")["value"].sum().reindex(x.index, fill_value=0.0)
    # isin over the distinct buyers: pandas tests an Arrow string column's values one Python call each
    churned = pd.Series((~x.index.isin(later["user"].unique().tolist())).astype(int), index=x.index)
    return x, churned, spend


def _settings(cfg: TrainConfig) -> tuple[float, range, int]:
    s = cfg.segments
    unknown = sorted(set(s) - {"horizon_days", "k_min", "k_max", "trees"})
    if unknown:
        raise ValueError(f"segments.{unknown[0]}: unknown setting (known: horizon_days, k_min, k_max, trees)")
    try:
        trees = int(s.get("trees", 100))
        horizon_days = float(s.get("horizon_days", 90))
        k_min, k_max = int(s.get("k_min", 2)), int(s.get("k_max", 4 if cfg.quick else 8))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"segments settings: {exc} (horizon_days, k_min, k_max, trees)") from None
    if trees < 1:
        raise ValueError(f"segments.trees: expected a positive number of boosting iterations, got {trees}")
    if not horizon_days > 0:
        raise ValueError(f"segments.horizon_days: expected a positive number of days, got {horizon_days}")
    if k_min < 2 or k_max < k_min:
        raise ValueError(f"segments.k_min/k_max: expected 2 <= k_min <= k_max, got {k_min}..{k_max}")
    return horizon_days * DAY, range(k_min, k_max + 1), trees


def train_segments(cfg: TrainConfig, ds: Dataset | None = None) -> SegmentsResult:
    """Score every customer at the end of the log; learn churn and value at end - horizon; log, register, publish."""
    horizon, ks, trees = _settings(cfg)
    configure(cfg.tracking_uri)
    ds = ds or load_dataset(cfg.source, cfg.data_dir)
    ev = ds.events
    if ev.empty:
        raise ValueError(f"no events in {ds.source}")
    now = float(ev["ts"].max()) + 1.0  # T: just after the last event
    t0 = now - horizon
    feats = customer_features(ev, now, horizon)
    if len(feats) < MIN_CUSTOMERS:
        raise ValueError(f"segments need purchases of at least {MIN_CUSTOMERS} customers; {ds.source} has {len(feats)}")
    x0, churned, spend = churn_labels(ev, t0, horizon)  # checked first: a log too short fails before any fitting
    if len(x0) < MIN_CUSTOMERS or churned.value_counts().reindex([0, 1], fill_value=0).min() < 2:
        raise ValueError(f"churn needs customers who bought before {horizon / DAY:g} days from the end of the log, "
                         f"some buying again and some not (found {len(x0)}); set segments.horizon_days lower")
    bar = tqdm(total=4, desc="segments", disable=not cfg.progress)
    bar.set_postfix_str("rfm")
    rfm = rfm_scores(feats)
    segment = name_segments(rfm)
    bar.update()

    bar.set_postfix_str("clusters")
    z, z_mean, z_scale = standardize(feats)
    with threadpool_limits(1):
        km, sil = choose_clusters(z, ks, cfg.seed)
    profiles = feats[CLUSTER_FEATURES].groupby(km.labels_).median().round(2)
    bar.update()

    bar.set_postfix_str("churn and value")
    xc, yc, sc = x0[MODEL_FEATURES].to_numpy(), churned.to_numpy(), spend.to_numpy()
    tr, te = train_test_split(np.arange(len(xc)), test_size=0.3, random_state=cfg.seed, stratify=yc)
    # small, shallow trees: a few thousand customers overfit deeper ones (over-confident risk, lower AUC)
    gbt: dict[str, Any] = dict(max_iter=50 if cfg.quick else trees, learning_rate=0.05, max_leaf_nodes=8,
               min_samples_leaf=min(80, max(5, len(tr) // 20)), random_state=cfg.seed)
    with threadpool_limits(1, user_api="openmp"):
        churn_model = HistGradientBoostingClassifier(**gbt).fit(xc[tr], yc[tr])
        # spend is heavy-tailed: the median (absolute error) forecast with default-size trees measured best (MAE)
        value_model = HistGradientBoostingRegressor(loss="absolute_error", max_iter=50 if cfg.quick else 2 * trees,
                                                    learning_rate=0.05, random_state=cfg.seed).fit(xc[tr], sc[tr])
    churn_p = churn_model.predict_proba(xc[te])[:, 1]
    churn_auc = float(roc_auc_score(yc[te], churn_p)) if len(set(yc[te])) > 1 else float("nan")
    churn_brier = float(brier_score_loss(yc[te], churn_p))
    cltv_mae = float(mean_absolute_error(sc[te], np.maximum(value_model.predict(xc[te]), 0.0)))
    naive_mae = float(mean_absolute_error(sc[te], x0["spend_90d"].to_numpy()[te]))  # "same as the last 90 days"
    xn = feats[MODEL_FEATURES].to_numpy()
    churn_now = churn_model.predict_proba(xn)[:, 1]
    value_now = np.maximum(value_model.predict(xn), 0.0)
    bar.update()

    bar.set_postfix_str("log and register")
    users = list(feats.index)
    traits = {
        user: {"segment": segment[user], "cluster": str(int(c)), "churn_risk": f"{p:.4f}", "cltv_90d": f"{v:.2f}",
               "rfm": f"{r.r}{r.f}{r.m}"}
        for user, c, p, v, r in zip(users, km.labels_, churn_now, value_now, rfm.itertuples(index=False))
    }
    sizes = {s: int((segment == s).sum()) for s in SEGMENTS}
    metrics = {"churn_auc": churn_auc, "churn_brier": churn_brier, "cltv_mae": cltv_mae, "cltv_mae_naive": naive_mae,
               "clusters": float(km.n_clusters),
               "customers": float(len(feats)), "churn_rate": float(yc.mean()), "churn_train_customers": float(len(x0)),
               **{f"silhouette_k{k}": v for k, v in sil.items()}}
    params = {"horizon_days": horizon / DAY, "seed": cfg.seed, "k_range": f"{ks.start}..{ks.stop - 1}", **gbt,
              "scored_at": now, "churn_split_at": t0}
    with training_run(FAMILY, params, ds.fingerprint, {"source": ds.source}) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"sizes": sizes, "rules": name_segment.__doc__,
                         "cluster_medians": {str(k): v for k, v in profiles.to_dict("index").items()}}, "segments.json")
        log_figure(sizes_figure(sizes), "segment_sizes.png")
        log_figure(calibration_figure(yc[te], churn_p), "churn_calibration.png")
        with tempfile.TemporaryDirectory() as d:
            save_bundle(Path(d), {
                "churn_risk": churn_now, "cltv_90d": value_now, "cluster": km.labels_.astype(np.int64),
                "rfm": rfm.to_numpy().astype(np.int64), "centroids": km.cluster_centers_,
                "scaler_mean": z_mean, "scaler_scale": z_scale,
            }, {"family": FAMILY, "customer_ids": users, "segment": [segment[u] for u in users],
                "cluster_features": CLUSTER_FEATURES, "segments": list(SEGMENTS), "rules": name_segment.__doc__,
                "metrics": metrics, "scored_at": now, "horizon_days": horizon / DAY, "data_fingerprint": ds.fingerprint,
                "created_at": time.time()})
            log_bundle(Path(d))
        promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force)
    bar.update()
    bar.close()
    url = cfg.publish_redis_url or os.environ.get("RECSVC_REDIS_URL")
    if url:
        asyncio.run(_publish(url, traits))
    return SegmentsResult(metrics, traits, promotion, run.info.run_id, sizes, ds.fingerprint)


async def _publish(url: str, traits: dict[str, dict[str, str]]) -> None:
    store = RedisFeatureStore.from_url(url, prefix=os.environ.get("RECSVC_REDIS_PREFIX", "rs:v1"), timeout_s=10)
    try:
        await publish_and_index(store, traits)  # traits, and the segment/consent indexes offer exports read
    finally:
        await store.close()


def sizes_figure(sizes: dict[str, int]) -> Figure:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.bar(list(sizes), list(sizes.values()), color="#4c72b0")
    ax.set_ylabel("customers")
    ax.set_title("RFM segments")
    ax.tick_params(axis="x", rotation=30)
    return fig


def calibration_figure(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Figure:
    """Observed churn vs predicted churn risk on the held-out customers, in equal-width bins."""
    b = np.clip((p * bins).astype(int), 0, bins - 1)
    present = [k for k in range(bins) if (b == k).any()]
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot([p[b == k].mean() for k in present], [y[b == k].mean() for k in present], "o-", color="#c44e52")
    ax.set_xlabel("predicted churn risk")
    ax.set_ylabel("observed churn (no purchase in the horizon)")
    ax.set_title("Churn calibration (held-out customers)")
    return fig
