"""Offer propensity P(accept | customer, context, offer): gradient-boosted trees on a generic feature spec, judged by
ROC AUC on a hold-out and by replay of the policy "offer the highest-propensity coupon" (coupons were shown at random
in the data, so replay is unbiased). Exported as arrays for numpy-only scoring (features.propensity_model)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from features.bundle import save_bundle
from features.propensity_model import FeatureSpec, TreeEnsemble
from training.config import TrainConfig
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

FAMILY = "recsvc-propensity"
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "in_vehicle_coupon.csv.gz"
FREQ = ["never", "less1", "1~3", "4~8", "gt8"]
# The coupon survey mapped onto the generic spec: offer attributes, context, customer attributes.
OFFER = {"coupon": "offer.type", "expiration": "offer.expiration"}
CONTEXT = ["destination", "passanger", "weather", "time", "direction_same"]
CUSTOMER_CAT = ["gender", "maritalStatus", "education", "occupation", "has_children"]
CUSTOMER_ORD = {
    "age": ["below21", "21", "26", "31", "36", "41", "46", "50plus"],
    "income": ["Less than $12500", "$12500 - $24999", "$25000 - $37499", "$37500 - $49999", "$50000 - $62499",
               "$62500 - $74999", "$75000 - $87499", "$87500 - $99999", "$100000 or More"],
    **{f: FREQ for f in ["Bar", "CoffeeHouse", "CarryAway", "RestaurantLessThan20", "Restaurant20To50"]},
}
NUMERIC = ["temperature", "toCoupon_GEQ15min", "toCoupon_GEQ25min"]


@dataclass
class PropensityResult:
    metrics: dict[str, float]
    promotion: PromotionResult | None
    run_id: str


def rows_from_survey(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict("records"):
        row = {OFFER.get(k, k): (None if pd.isna(v) else str(v) if not isinstance(v, (int, float)) or k in CUSTOMER_CAT + CONTEXT else v)
               for k, v in rec.items() if k != "Y"}
        out.append(row)
    return out


def build_spec(rows: list[dict[str, Any]]) -> FeatureSpec:
    cats = ["offer.type", "offer.expiration", *CONTEXT, *CUSTOMER_CAT]
    return FeatureSpec(
        categorical={c: sorted({str(r[c]) for r in rows if r.get(c) is not None}) for c in cats},
        ordinal=CUSTOMER_ORD,
        numeric=NUMERIC,
    )


def export_trees(clf: HistGradientBoostingClassifier) -> TreeEnsemble:
    feats, thr, miss, left, right, val, starts = [], [], [], [], [], [], []
    offset = 0
    for (pred,) in clf._predictors:  # binary: one tree per iteration
        nodes = pred.nodes
        starts.append(offset)
        leaf = nodes["is_leaf"].astype(bool)
        feats.append(np.where(leaf, -1, nodes["feature_idx"]).astype(np.int64))
        thr.append(nodes["num_threshold"].astype(np.float64))
        miss.append(nodes["missing_go_to_left"].astype(bool))
        left.append(nodes["left"].astype(np.int64))
        right.append(nodes["right"].astype(np.int64))
        val.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
        offset += len(nodes)
    return TreeEnsemble(np.concatenate(feats), np.concatenate(thr), np.concatenate(miss), np.concatenate(left),
                        np.concatenate(right), np.concatenate(val), np.array(starts, dtype=np.int64),
                        float(np.ravel(clf._baseline_prediction)[0]))


def replay_acceptance(model: TreeEnsemble, spec: FeatureSpec, rows: list[dict[str, Any]], y: np.ndarray) -> tuple[float, int]:
    """Acceptance among hold-out rows where the shown coupon is the one the policy would pick."""
    types = spec.categorical["offer.type"]
    scores = np.column_stack([model.predict_proba(spec.encode([{**r, "offer.type": t} for r in rows])) for t in types])
    pick = np.array(types)[scores.argmax(axis=1)]
    shown = np.array([r["offer.type"] for r in rows])
    match = pick == shown
    return (float(y[match].mean()) if match.any() else float("nan")), int(match.sum())


def train_propensity(cfg: TrainConfig) -> PropensityResult:
    configure(cfg.tracking_uri)
    p = cfg.propensity
    path = Path(p.get("data", DEFAULT_DATA))
    df = pd.read_csv(path)
    y = df["Y"].to_numpy().astype(int)
    rows = rows_from_survey(df)
    spec = build_spec(rows)
    x = spec.encode(rows)
    rng = np.random.default_rng(cfg.seed)
    hold = rng.random(len(rows)) < 0.25
    params = dict(max_iter=60 if cfg.quick else int(p.get("max_iter", 400)), learning_rate=float(p.get("learning_rate", 0.05)),
                  max_leaf_nodes=int(p.get("max_leaf_nodes", 31)), l2_regularization=float(p.get("l2", 1.0)),
                  min_samples_leaf=int(p.get("min_samples_leaf", 20)), early_stopping=False, random_state=cfg.seed)
    with tqdm(total=3, desc="propensity", disable=not cfg.progress) as bar:
        t = time.perf_counter()
        clf = HistGradientBoostingClassifier(**params).fit(x[~hold], y[~hold])
        fit_s = time.perf_counter() - t
        bar.update()
        model = export_trees(clf)
        prob = model.predict_proba(x[hold])
        auc = float(roc_auc_score(y[hold], prob))
        hold_rows = [r for r, h in zip(rows, hold) if h]
        replay, matched = replay_acceptance(model, spec, hold_rows, y[hold])
        bar.update()
        metrics = {"roc_auc": auc, "replay_acceptance": replay, "replay_matched_rows": float(matched),
                   "random_acceptance": float(y[hold].mean()), "fit_seconds": fit_s}
        fp = f"{path.name}:{len(df)}:{int(y.sum())}"
        with training_run(FAMILY, {**params, "holdout": 0.25, "data": path.name}, fp) as run:
            mlflow.log_metrics(metrics)
            log_figure(calibration_figure(y[hold], prob), "calibration.png")
            with tempfile.TemporaryDirectory() as d:
                save_bundle(Path(d), model.arrays(), {"family": FAMILY, "model": "gbt", "spec": spec.to_json(),
                                                       "metrics": metrics, "created_at": time.time()})
                log_bundle(Path(d))
            promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force)
        bar.update()
    return PropensityResult(metrics, promotion, run.info.run_id)


def calibration_figure(y: np.ndarray, p: np.ndarray) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.clip((p * 10).astype(int), 0, 9)
    xs = [p[bins == b].mean() for b in range(10) if (bins == b).any()]
    ys = [y[bins == b].mean() for b in range(10) if (bins == b).any()]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot(xs, ys, "o-")
    ax.set_xlabel("predicted acceptance")
    ax.set_ylabel("observed acceptance")
    ax.set_title("Offer propensity calibration (hold-out)")
    return fig
