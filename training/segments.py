"""Customer segments from the offline log: RFM scores with named segments, behaviour clusters (k by silhouette),
churn risk (no purchase in the next 90 days) and a 90-day value forecast, both judged on a time split.
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
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, roc_auc_score, silhouette_score
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from features.bundle import save_bundle
from features.redis_store import RedisFeatureStore
from features.traits import publish_traits
from training.config import TrainConfig
from training.data import Dataset, is_customer, load_dataset
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

FAMILY = "recsvc-segments"
DAY = 86400.0
HORIZON = 90 * DAY
SEGMENTS = ("champions", "loyal", "potential", "new", "at risk", "hibernating", "lost")


@dataclass
class SegmentsResult:
    metrics: dict[str, float]
    traits: dict[str, dict[str, str]]
    promotion: PromotionResult | None
    run_id: str
    sizes: dict[str, int]


def customer_features(events: pd.DataFrame, at: float, horizon: float = HORIZON) -> pd.DataFrame:
    """Per customer with a purchase before `at`: recency, frequency (purchase days), monetary, tenure, basket."""
    ev = events[(events["ts"] < at) & events["user"].map(is_customer)]
    buys = ev[ev["type"] == "purchase"]
    rets = ev[ev["type"] == "return"]
    if buys.empty:
        return pd.DataFrame(columns=["recency_days", "frequency", "monetary", "tenure_days", "avg_basket", "spend_90d", "returns"])
    day = (buys["ts"] // DAY).astype(int)
    g = buys.assign(day=day).groupby("user")
    f = pd.DataFrame({
        "recency_days": (at - g["ts"].max()) / DAY,
        "frequency": g["day"].nunique().astype(float),
        "monetary": g["value"].sum() - rets.groupby("user")["value"].sum().reindex(g["value"].sum().index, fill_value=0.0),
        "tenure_days": (at - g["ts"].min()) / DAY,
    })
    f["avg_basket"] = f["monetary"] / f["frequency"].clip(lower=1)
    recent = buys[buys["ts"] >= at - horizon].groupby("user")["value"].sum()
    f["spend_90d"] = recent.reindex(f.index, fill_value=0.0)
    f["returns"] = rets.groupby("user").size().reindex(f.index, fill_value=0).astype(float)
    return f


def rfm_scores(f: pd.DataFrame) -> pd.DataFrame:
    """Quintile scores 1-5 (5 = best: most recent, most frequent, highest spend); ranks break ties."""
    def q(s: pd.Series, ascending: bool) -> pd.Series:
        r = s.rank(method="first", ascending=ascending)
        return (np.ceil(r / len(s) * 5)).clip(1, 5).astype(int)

    return pd.DataFrame({"r": q(-f["recency_days"], True), "f": q(f["frequency"], True), "m": q(f["monetary"], True)}, index=f.index)


def name_segment(r: int, f: int, m: int) -> str:
    """The rules, in order (documented in docs/evaluation.md)."""
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r >= 3 and f >= 4:
        return "loyal"
    if r >= 4 and f == 1:
        return "new"
    if r >= 3:
        return "potential"
    if f >= 3:
        return "at risk"
    if r == 2:
        return "hibernating"
    return "lost"


def _label_split(events: pd.DataFrame, t0: float, horizon: float) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    x = customer_features(events, t0, horizon)
    later = events[(events["ts"] >= t0) & (events["ts"] < t0 + horizon) & (events["type"] == "purchase")]
    spend = later.groupby("user")["value"].sum().reindex(x.index, fill_value=0.0)
    churned = (~x.index.isin(later["user"])).astype(int)
    return x, pd.Series(churned, index=x.index), spend


def train_segments(cfg: TrainConfig, ds: Dataset | None = None) -> SegmentsResult:
    configure(cfg.tracking_uri)
    ds = ds or load_dataset(cfg.source, cfg.data_dir)
    ev = ds.events
    if ev.empty:
        raise ValueError("no events in the offline log")
    now = float(ev["ts"].max()) + 1.0
    horizon = float(cfg.segments.get("horizon_days", 90)) * DAY
    t0 = now - horizon
    bar = tqdm(total=4, desc="segments", disable=not cfg.progress)
    feats = customer_features(ev, now, horizon)
    if len(feats) < 10:
        raise ValueError(f"segments need purchases of at least 10 customers; the log has {len(feats)}")
    rfm = rfm_scores(feats)
    segment = pd.Series([name_segment(*row) for row in rfm.itertuples(index=False)], index=rfm.index)
    bar.update()

    cols = ["recency_days", "frequency", "monetary", "tenure_days", "avg_basket"]
    z = np.log1p(feats[cols].clip(lower=0).to_numpy())
    z = (z - z.mean(axis=0)) / np.maximum(z.std(axis=0), 1e-9)
    sample = np.random.default_rng(cfg.seed).choice(len(z), min(len(z), 2000), replace=False)
    sil: dict[int, float] = {}
    for k in range(2, 5 if cfg.quick else 9):
        labels = KMeans(k, n_init=4, random_state=cfg.seed).fit_predict(z[sample])
        sil[k] = float(silhouette_score(z[sample], labels))
    best_k = max(sil, key=lambda k: sil[k])
    km = KMeans(best_k, n_init=4, random_state=cfg.seed).fit(z)
    bar.update()

    x0, churned, spend = _label_split(ev, t0, horizon)
    if len(x0) < 10 or churned.nunique() < 2:
        raise ValueError(f"churn needs customers who bought before {horizon / DAY:.0f} days from the end of the log, "
                         f"some buying again and some not (found {len(x0)}); set segments.horizon_days lower")
    xc = x0[cols + ["spend_90d", "returns"]].to_numpy()
    tr, te = train_test_split(np.arange(len(xc)), test_size=0.3, random_state=cfg.seed, stratify=churned if churned.value_counts().min() >= 2 else None)
    churn_model = HistGradientBoostingClassifier(max_iter=50 if cfg.quick else 200, learning_rate=0.05, random_state=cfg.seed)
    churn_model.fit(xc[tr], churned.to_numpy()[tr])
    churn_p = churn_model.predict_proba(xc[te])[:, 1]
    churn_auc = float(roc_auc_score(churned.to_numpy()[te], churn_p)) if churned.iloc[te].nunique() > 1 else float("nan")
    value_model = HistGradientBoostingRegressor(max_iter=50 if cfg.quick else 200, learning_rate=0.05, loss="absolute_error", random_state=cfg.seed)
    value_model.fit(xc[tr], spend.to_numpy()[tr])
    cltv_mae = float(mean_absolute_error(spend.to_numpy()[te], np.maximum(value_model.predict(xc[te]), 0)))
    naive_mae = float(mean_absolute_error(spend.to_numpy()[te], x0["spend_90d"].to_numpy()[te]))
    bar.update()

    xn = feats[cols + ["spend_90d", "returns"]].to_numpy()
    churn_now = churn_model.predict_proba(xn)[:, 1]
    value_now = np.maximum(value_model.predict(xn), 0.0)
    traits = {
        user: {"segment": segment[user], "cluster": str(int(c)), "churn_risk": f"{p:.4f}", "cltv_90d": f"{v:.2f}",
               "rfm": f"{r.r}{r.f}{r.m}"}
        for user, c, p, v, r in zip(feats.index, km.labels_, churn_now, value_now, rfm.itertuples(index=False))
    }
    sizes = {s: int((segment == s).sum()) for s in SEGMENTS}
    metrics = {"churn_auc": churn_auc, "cltv_mae": cltv_mae, "cltv_mae_naive": naive_mae, "clusters": float(best_k),
               "customers": float(len(feats)), "churn_rate": float(churned.mean()),
               **{f"silhouette_k{k}": v for k, v in sil.items()}}
    with training_run(FAMILY, {"horizon_days": horizon / DAY, "seed": cfg.seed, "k_range": f"2..{max(sil)}"}, ds.fingerprint) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"sizes": sizes, "rules": name_segment.__doc__}, "segments.json")
        log_figure(sizes_figure(sizes), "segment_sizes.png")
        users = list(feats.index)
        with tempfile.TemporaryDirectory() as d:
            save_bundle(Path(d), {
                "churn_risk": churn_now, "cltv_90d": value_now, "cluster": km.labels_.astype(np.int64),
                "rfm": rfm.to_numpy().astype(np.int64), "centroids": km.cluster_centers_,
            }, {"family": FAMILY, "customer_ids": users, "segment": [segment[u] for u in users], "metrics": metrics,
                "scored_at": now, "created_at": time.time()})
            log_bundle(Path(d))
        promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force)
    bar.update()
    bar.close()
    url = cfg.publish_redis_url or os.environ.get("RECSVC_REDIS_URL")
    if url:
        asyncio.run(_publish(url, traits))
    return SegmentsResult(metrics, traits, promotion, run.info.run_id, sizes)


async def _publish(url: str, traits: dict[str, dict[str, str]]) -> None:
    store = RedisFeatureStore.from_url(url, prefix=os.environ.get("RECSVC_REDIS_PREFIX", "rs:v1"), timeout_s=10)
    try:
        await publish_traits(store, traits)
    finally:
        await store.close()


def sizes_figure(sizes: dict[str, int]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(sizes), list(sizes.values()), color="#4c72b0")
    ax.set_ylabel("customers")
    ax.set_title("RFM segments")
    ax.tick_params(axis="x", rotation=30)
    return fig
