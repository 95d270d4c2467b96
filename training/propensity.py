"""Offer propensity P(accept | customer, context, offer): gradient-boosted trees on a generic feature spec, judged by
ROC AUC on a 25% hold-out and by replay of the policy "offer the highest-propensity coupon" (coupons were shown at
random in the survey, so replay is unbiased). Exported as arrays for numpy-only scoring (features.propensity_model).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from features.bundle import save_bundle
from features.propensity_model import FeatureSpec, TreeEnsemble
from training.config import TrainConfig
from training.parallel import Pending
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

FAMILY = "recsvc-propensity"
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "in_vehicle_coupon.csv.gz"
HOLDOUT = 0.25
OFFER_TYPE = "offer.type"
OFFER_KEYS = [OFFER_TYPE, "offer.expiration_hours"]

# The in-vehicle coupon survey mapped onto the generic spec (offer.*, context.*, customer.*).
FREQ = ["never", "less1", "1~3", "4~8", "gt8"]
VISITS = {  # survey column -> the coupon type it measures visits to
    "Bar": "Bar", "CoffeeHouse": "Coffee House", "CarryAway": "Carry out & Take away",
    "RestaurantLessThan20": "Restaurant(<20)", "Restaurant20To50": "Restaurant(20-50)",
}
INCOME = ["Less than $12500", "$12500 - $24999", "$25000 - $37499", "$37500 - $49999", "$50000 - $62499",
          "$62500 - $74999", "$75000 - $87499", "$87500 - $99999", "$100000 or More"]
AGE_YEARS = {"below21": 18.0, "50plus": 50.0}  # bands by their lower bound
HOUR = {"7AM": 7.0, "10AM": 10.0, "2PM": 14.0, "6PM": 18.0, "10PM": 22.0}
EXPIRATION_HOURS = {"2h": 2.0, "1d": 24.0}
SURVEY_COLUMNS = ["destination", "passanger", "weather", "temperature", "time", "coupon", "expiration", "gender", "age",
                  "maritalStatus", "has_children", "education", "occupation", "income", *VISITS,
                  "toCoupon_GEQ15min", "toCoupon_GEQ25min", "direction_same", "Y"]
CATEGORICAL = [OFFER_TYPE, "context.destination", "context.companions", "context.weather", "customer.gender",
               "customer.marital_status", "customer.education", "customer.occupation"]
NUMERIC = ["offer.expiration_hours", "context.temperature", "context.hour", "context.minutes_away",
           "context.same_direction", "customer.age", "customer.has_children"]


TARGETS = {"roc_auc": 0.80, "replay_acceptance": 0.75}  # the bar on the coupon survey's hold-out


@dataclass
class PropensityResult:
    metrics: dict[str, float]
    promotion: PromotionResult | None
    run_id: str
    fingerprint: str = ""


def _num(series: pd.Series, mapping: dict[str, float], column: str) -> pd.Series:
    out = series.map(lambda v: mapping[v] if isinstance(v, str) and v in mapping else pd.to_numeric(v, errors="coerce"))
    bad = series.notna() & out.isna()
    if bad.any():
        raise ValueError(f"coupon data column {column!r}: unexpected value {series[bad].iloc[0]!r}")
    return out.astype(float)


def survey_rows(df: pd.DataFrame) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The survey's rows as generic attribute dicts, and the accept labels (Y)."""
    missing = [c for c in SURVEY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"coupon data: missing column(s) {', '.join(missing)}")
    y = pd.to_numeric(df["Y"], errors="coerce")
    if y.isna().any() or not y.isin([0, 1]).all():
        raise ValueError("coupon data column 'Y': expected 0 or 1 in every row")
    text = lambda c: df[c].astype("string").where(df[c].notna(), None).astype(object)  # noqa: E731
    cols: dict[str, pd.Series] = {
        OFFER_TYPE: text("coupon"),
        "offer.expiration_hours": _num(df["expiration"], EXPIRATION_HOURS, "expiration"),
        "context.destination": text("destination"),
        "context.companions": text("passanger"),
        "context.weather": text("weather"),
        "context.temperature": _num(df["temperature"], {}, "temperature"),
        "context.hour": _num(df["time"], HOUR, "time"),
        "context.minutes_away": 5.0 + 10.0 * _num(df["toCoupon_GEQ15min"], {}, "toCoupon_GEQ15min")
        + 10.0 * _num(df["toCoupon_GEQ25min"], {}, "toCoupon_GEQ25min"),
        "context.same_direction": _num(df["direction_same"], {}, "direction_same"),
        "customer.gender": text("gender"),
        "customer.age": _num(df["age"], AGE_YEARS, "age"),
        "customer.marital_status": text("maritalStatus"),
        "customer.has_children": _num(df["has_children"], {}, "has_children"),
        "customer.education": text("education"),
        "customer.occupation": text("occupation"),
        "customer.income_band": text("income"),
        **{f"customer.visits.{offer}": text(col) for col, offer in VISITS.items()},
    }
    frame = pd.DataFrame(cols).astype(object)
    frame = frame.where(frame.notna(), None)
    return frame.to_dict("records"), y.to_numpy().astype(np.int64)


def survey_spec(rows: list[dict[str, Any]]) -> FeatureSpec:
    """Categories seen in the data (sorted), ordinal scales written out, and the visits-to-offered-type cross."""
    return FeatureSpec(
        categorical={c: sorted({str(r[c]) for r in rows if r.get(c) is not None}) for c in CATEGORICAL},
        ordinal={"customer.income_band": INCOME, **{f"customer.visits.{offer}": FREQ for offer in VISITS.values()}},
        numeric=NUMERIC,
        crosses={"cross.visits_to_offer_type": (OFFER_TYPE, "customer.visits.")},
    )


def export_trees(clf: HistGradientBoostingClassifier) -> TreeEnsemble:
    """A fitted binary HistGradientBoostingClassifier as flat arrays (numerical splits only)."""
    if not hasattr(clf, "_predictors"):
        raise ValueError("export_trees: the classifier is not fitted")
    if clf.n_trees_per_iteration_ != 1:
        raise ValueError("export_trees: only binary classifiers are supported")
    feats, thr, miss, left, right, val, starts = [], [], [], [], [], [], []
    offset = 0
    for (pred,) in clf._predictors:
        nodes = pred.nodes
        if nodes["is_categorical"].any():
            raise ValueError("export_trees: native categorical splits are not supported; one-hot encode instead")
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


class CompiledTrees:
    """A fitted classifier scored by scikit-learn's compiled predictor (one thread): the same trees `export_trees`
    turns into arrays, so it ranks as the numpy walk the service does (a test checks it), many times faster over the
    hundreds of thousands of rows an evaluation scores. The classifier may still be fitting in another lane (a
    `training.parallel.Pending`): it is waited for on first use."""

    def __init__(self, clf: HistGradientBoostingClassifier | Pending[HistGradientBoostingClassifier]) -> None:
        self._clf = clf

    @property
    def classifier(self) -> HistGradientBoostingClassifier:
        if not isinstance(self._clf, HistGradientBoostingClassifier):
            self._clf = self._clf.result()
        return self._clf

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds), shape (n_rows,)."""
        if len(x) == 0:  # scikit-learn refuses an empty batch; the numpy trees return an empty one
            return np.zeros(0, dtype=np.float64)
        with threadpool_limits(1, user_api="openmp"):
            return np.asarray(self.classifier.decision_function(x), dtype=np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(y = 1) per row, shape (n_rows,)."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float64)
        with threadpool_limits(1, user_api="openmp"):
            return np.asarray(self.classifier.predict_proba(x)[:, 1], dtype=np.float64)


def fit_trees(x: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> tuple[HistGradientBoostingClassifier, TreeEnsemble]:
    """Fit the classifier (one OpenMP thread: the machine is shared) and export it."""
    clf = HistGradientBoostingClassifier(**params)
    with threadpool_limits(1, user_api="openmp"):
        clf.fit(x, y)
    return clf, export_trees(clf)


def holdout_mask(n: int, seed: int, fraction: float = HOLDOUT) -> np.ndarray:
    """Exactly round(fraction * n) rows, chosen by a seeded permutation."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]] = True
    return mask


def replay_acceptance(model: TreeEnsemble | CompiledTrees, spec: FeatureSpec, rows: list[dict[str, Any]], y: np.ndarray,
                      offer_types: list[str] | None = None) -> tuple[float, int]:
    """Acceptance among rows whose shown offer type is the one the policy picks (argmax over all types), and how
    many rows that is. Other offer attributes (expiration) stay as shown."""
    types = offer_types or spec.categorical[OFFER_TYPE]
    scores = np.column_stack([model.predict_proba(spec.encode([{**r, OFFER_TYPE: t} for r in rows])) for t in types])
    pick = np.asarray(types, dtype=object)[scores.argmax(axis=1)]
    match = pick == np.asarray([r.get(OFFER_TYPE) for r in rows], dtype=object)
    return (float(y[match].mean()) if match.any() else float("nan")), int(match.sum())


def random_replay(rows: list[dict[str, Any]], y: np.ndarray) -> float:
    """The replay estimate of "offer a uniformly random type": the mean over offer types of the acceptance among
    rows shown that type (the survey did not show the types equally often, so this differs from the base rate)."""
    shown = pd.Series([r.get(OFFER_TYPE) for r in rows], dtype=object)
    rates = pd.Series(y, dtype=float).groupby(shown.to_numpy()).mean()
    return float(rates.mean()) if len(rates) else float("nan")


def _params(cfg: TrainConfig) -> dict[str, Any]:
    p = cfg.propensity
    known = ("data", "max_iter", "learning_rate", "max_leaf_nodes", "l2", "min_samples_leaf")
    unknown = sorted(set(p) - set(known))
    if unknown:
        raise ValueError(f"propensity.{unknown[0]}: unknown setting (known: {', '.join(known)})")
    try:
        return dict(max_iter=60 if cfg.quick else int(p.get("max_iter", 400)),
                    learning_rate=float(p.get("learning_rate", 0.05)), max_leaf_nodes=int(p.get("max_leaf_nodes", 31)),
                    l2_regularization=float(p.get("l2", 1.0)), min_samples_leaf=int(p.get("min_samples_leaf", 20)),
                    early_stopping=False, random_state=cfg.seed)
    except (TypeError, ValueError) as exc:
        names = "max_iter, learning_rate, max_leaf_nodes, l2, min_samples_leaf"
        raise ValueError(f"propensity settings: {exc} ({names})") from None


def train_propensity(cfg: TrainConfig) -> PropensityResult:
    """Fit on 75% of the coupon survey, evaluate on the rest, log to MLflow, register and gate on roc_auc."""
    params = _params(cfg)
    path = Path(cfg.propensity.get("data", DEFAULT_DATA))
    if not path.is_file():
        raise ValueError(f"propensity.data: no such file {path}")
    configure(cfg.tracking_uri)
    with tqdm(total=4, desc="propensity", disable=not cfg.progress) as bar:
        bar.set_postfix_str("data")
        df = pd.read_csv(path)
        rows, y = survey_rows(df)
        spec = survey_spec(rows)
        x = spec.encode(rows)
        hold = holdout_mask(len(rows), cfg.seed)
        bar.update()
        bar.set_postfix_str("fit")
        t = time.perf_counter()
        clf, model = fit_trees(x[~hold], y[~hold], params)
        fit_s = time.perf_counter() - t
        bar.update()
        bar.set_postfix_str("evaluate")
        scorer = CompiledTrees(clf)  # the bundle's trees (`model`), scored faster
        prob = scorer.predict_proba(x[hold])
        hold_rows = [r for r, h in zip(rows, hold) if h]
        replay, matched = replay_acceptance(scorer, spec, hold_rows, y[hold])
        metrics = {"roc_auc": float(roc_auc_score(y[hold], prob)), "replay_acceptance": replay,
                   "replay_random": random_replay(hold_rows, y[hold]),
                   "replay_matched_rows": float(matched), "holdout_acceptance": float(y[hold].mean()),
                   "holdout_rows": float(hold.sum()), "fit_seconds": fit_s}
        bar.update()
        bar.set_postfix_str("log")
        fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
        with training_run(FAMILY, {**params, "holdout": HOLDOUT, "data": path.name, "features": len(spec.columns)},
                          fingerprint, {"source": f"file:{path.name}"}) as run:
            mlflow.log_metrics(metrics)
            log_figure(calibration_figure(y[hold], prob), "calibration.png")
            with tempfile.TemporaryDirectory() as d:
                save_bundle(Path(d), model.arrays(), {
                    "family": FAMILY, "model": "gradient_boosted_trees", "spec": spec.to_json(),
                    "columns": spec.columns, "offer_keys": OFFER_KEYS, "metrics": metrics, "data_fingerprint": fingerprint,
                    "created_at": time.time()})
                log_bundle(Path(d))
            promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force)
        bar.update()
    return PropensityResult(metrics, promotion, run.info.run_id, fingerprint)


def calibration_figure(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Figure:
    """Observed vs predicted acceptance in equal-width probability bins (marker size ~ rows in the bin)."""
    b = np.clip((p * bins).astype(int), 0, bins - 1)
    present = [k for k in range(bins) if (b == k).any()]
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot([p[b == k].mean() for k in present], [y[b == k].mean() for k in present], "-", color="#4c72b0")
    ax.scatter([p[b == k].mean() for k in present], [y[b == k].mean() for k in present],
               s=[max(8.0, 200.0 * (b == k).mean()) for k in present], color="#4c72b0")
    ax.set_xlabel("predicted acceptance")
    ax.set_ylabel("observed acceptance")
    ax.set_title("Offer propensity calibration (hold-out)")
    return fig
