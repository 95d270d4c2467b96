"""The recommender family job: fit every baseline and model, evaluate both protocols side by side, fit the two-stage
re-ranker on validation windows before the split, log everything to one MLflow run, save the numpy bundle, register
and gate the promotion."""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from features.bundle import save_bundle
from features.keys import SCHEMA_VERSION
from training.config import TrainConfig
from training.data import Dataset, TestSet, build_testset, build_trainset, load_interactions, to_ts
from training.evaluation import Scores, evaluate
from training.models.base import Model, TrainSet
from training.models.baselines import Popularity, PopularityByCountry, RepeatPurchase
from training.models.blend import Reranker, RerankParams, Window, window_rows
from training.parallel import INLINE, Lanes
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

log = logging.getLogger("recsvc.training")

FAMILY = "recsvc-recommender"
CHAMPION = "rerank"
BASELINES = ("popularity", "popularity_country", "repeat")
DAY = 86400.0


@dataclass
class ModelRow:
    name: str
    kind: str  # baseline | model | champion-candidate
    fit_s: float
    all: Scores
    new: Scores


@dataclass
class RecommenderResult:
    rows: list[ModelRow]
    params: dict[str, Any]
    promotion: PromotionResult | None
    fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    beats_baselines: bool = False


def _get(p: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = p.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"recommender.{key}: expected {kind.__name__}, got {value!r}") from None


def _optional(module: str, attr: str) -> Callable[..., Model] | None:
    """Models written by other helpers: a missing module leaves the model out with a log line, not a failure."""
    try:
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        log.warning("recommender: %s.%s unavailable (%s); left out of this run", module, attr, exc)
        return None


def candidates(cfg: TrainConfig) -> list[Model]:
    """Every baseline and collaborative model, configured from `cfg.recommender` (quick: fewer iterations)."""
    p, quick, seed = cfg.recommender, cfg.quick, cfg.seed
    models: list[Model] = [
        Popularity(),
        PopularityByCountry(),
        RepeatPurchase(half_life_days=_get(p, "repeat_half_life_days", float, 60.0)),
    ]
    knn = _optional("training.models.implicit_models", "ItemKNN")
    if knn is not None:
        models += [knn("cosine", k=_get(p, "knn_k", int, 100)), knn("bm25", k=_get(p, "knn_k", int, 100))]
    als = _optional("training.models.implicit_models", "ALS")
    if als is not None:
        models.append(als(factors=_get(p, "als_factors", int, 64),
                          regularization=_get(p, "als_regularization", float, 0.05),
                          iterations=3 if quick else _get(p, "als_iterations", int, 15),
                          alpha=_get(p, "als_alpha", float, 2.0), seed=seed))
    bpr = _optional("training.models.implicit_models", "BPR")
    if bpr is not None:
        models.append(bpr(factors=_get(p, "bpr_factors", int, 64),
                          learning_rate=_get(p, "bpr_learning_rate", float, 0.05),
                          regularization=_get(p, "bpr_regularization", float, 0.01),
                          iterations=5 if quick else _get(p, "bpr_iterations", int, 60), seed=seed))
    lightfm = _optional("training.models.lightfm_hybrid", "LightFMHybrid")
    if lightfm is not None and not p.get("skip_lightfm", False):
        models.append(lightfm(no_components=_get(p, "lightfm_components", int, 48),
                              epochs=2 if quick else _get(p, "lightfm_epochs", int, 10),
                              loss=str(p.get("lightfm_loss", "warp")),
                              learning_rate=_get(p, "lightfm_learning_rate", float, 0.05),
                              item_alpha=1e-6, user_alpha=1e-6, seed=seed, num_threads=1))
    return models


def rerank_params(cfg: TrainConfig) -> RerankParams:
    p = cfg.recommender
    defaults = RerankParams()
    kw: dict[str, Any] = {}
    for name, value in asdict(defaults).items():
        # ALS and item-kNN settings are shared with the stand-alone models; the rest are rerank_*
        key = name if name.startswith(("als_", "knn_")) else f"rerank_{name}"
        kw[name] = _get(p, key, type(value), value)
    kw["seed"] = cfg.seed
    if cfg.quick:
        kw.update(als_iterations=3, trees=20)
    return RerankParams(**kw)


def validation_windows(ds: Dataset, split: float, days: int, count: int, weights: dict[str, float] | None,
                       half_life: float) -> list[Window]:
    """`count` consecutive windows of `days` ending at the split, newest first; all strictly before the test period.

    On a short history the windows shrink so that the oldest still has as much history before it as the windows
    cover together (a window with no earlier purchases has nothing to re-rank).
    """
    first = float(ds.events["ts"].min()) if len(ds.events) else split
    span_days = (split - first) / DAY
    if span_days / (count + 1) < days:
        shrunk = int(span_days // (count + 1))
        if shrunk < 1:
            raise ValueError(f"validation_days: only {span_days:.1f} days of history before the split, too few")
        log.warning("recommender: validation windows shrunk from %d to %d days (%.0f days of history)",
                    days, shrunk, span_days)
        days = shrunk
    out = []
    for j in range(count):
        end = split - j * days * DAY
        start = end - days * DAY
        vtrain = build_trainset(ds, start, weights=weights, half_life_days=half_life)
        vtest = build_testset(ds, vtrain, start, end)
        out.append(Window(vtrain, vtest.users, vtest.relevant))
    return out


def metric_row(r: ModelRow) -> dict[str, float]:
    return {
        f"{r.name}.ndcg_at_10_all": r.all.ndcg, f"{r.name}.ndcg_at_10_new": r.new.ndcg,
        f"{r.name}.recall_at_10_all": r.all.recall, f"{r.name}.recall_at_10_new": r.new.recall,
        f"{r.name}.map_at_10_all": r.all.map, f"{r.name}.map_at_10_new": r.new.map,
        f"{r.name}.coverage": r.all.coverage, f"{r.name}.fit_seconds": r.fit_s,
    }


def fit_and_evaluate(model: Model, train: TrainSet, test: TestSet) -> ModelRow:
    """Fit one model and evaluate it on both protocols (a task: the models are independent of each other)."""
    t = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t
    kind = "baseline" if model.name in BASELINES else "model"
    return ModelRow(model.name, kind, fit_s, evaluate(model, train, test, protocol="all"),
                    evaluate(model, train, test, protocol="new"))


HELPER_WINDOWS = 2  # the oldest (smallest) validation windows' rows go to the helper lane, the rest stay here
SLOW_MODELS = ("lightfm",)  # queued on the helper before the "new" trees; the other models after them


def train_recommender(cfg: TrainConfig, ds: Dataset | None = None, lanes: Lanes = INLINE) -> RecommenderResult:
    """Fit, evaluate (protocols a and b), log one MLflow run, save the bundle, register and gate the promotion.

    With a helper lane (training.parallel) the work is split in two, in an order that keeps both busy: the helper
    takes the oldest validation windows' rows, LightFM, the re-ranker's "new" trees and the other models; this
    process the newest windows' rows, the "all" trees, the champion's evaluation and the serving bundle. Every task
    is deterministic, so the numbers are those of a run in one lane.
    """
    client = configure(cfg.tracking_uri)
    split, end = to_ts(cfg.split_date), to_ts(cfg.end_date)
    if end <= split:
        raise ValueError(f"end_date {cfg.end_date} must be after split_date {cfg.split_date}")
    if cfg.validation_days < 1:
        raise ValueError(f"validation_days: must be at least 1, got {cfg.validation_days}")
    p = cfg.recommender
    weights = p.get("event_weights")
    if weights is not None and not isinstance(weights, dict):
        raise ValueError(f"recommender.event_weights: expected a table of type = weight, got {weights!r}")
    half_life = _get(p, "half_life_days", float, 120.0)
    n_windows = 1 if cfg.quick else _get(p, "validation_windows", int, 5)
    if n_windows < 1:
        raise ValueError(f"recommender.validation_windows: must be at least 1, got {n_windows}")
    ds = ds if ds is not None else load_interactions(cfg.source, cfg.data_dir)
    train = build_trainset(ds, split, weights=weights, half_life_days=half_life)
    test = build_testset(ds, train, split, end)
    if len(test.users) == 0:
        raise ValueError(
            f"no test customers: no purchases between {cfg.split_date} and {cfg.end_date} by earlier buyers"
        )
    models = candidates(cfg)
    rp = rerank_params(cfg)
    champion = Reranker(rp)
    with tqdm(total=4, desc="recommender: re-ranker", disable=not cfg.progress) as bar:
        t = time.perf_counter()
        windows = [w for w in validation_windows(ds, split, cfg.validation_days, n_windows, weights, half_life)
                   if len(w.users)]
        share = max(0, min(HELPER_WINDOWS, len(windows) - 1)) if lanes.parallel else 0
        helper_rows = [lanes.submit(window_rows, w, rp) for w in windows[len(windows) - share:]]
        pending = {m.name: lanes.submit(fit_and_evaluate, m, train, test) for m in models if m.name in SLOW_MODELS}
        here = [window_rows(w, rp) for w in windows[: len(windows) - share]]
        bar.update()
        champion.fit_ranker(here + [r.result() for r in helper_rows], lanes)
        pending.update({m.name: lanes.submit(fit_and_evaluate, m, train, test) for m in models if m.name not in pending})
        bar.update()
        champion.fit(train)
        fit_s = time.perf_counter() - t
        scores_all = evaluate(champion, train, test, protocol="all")
        bar.update()

        # What is served: the evaluated configuration and trees, with its item neighbours, factors and statistics
        # refit on every interaction up to the end of the data (so items and customers after the split are known),
        # and each customer's ranked candidates precomputed from their full history. Built before the "new"
        # protocol's evaluation, which waits for the helper's trees.
        serve_until = float(ds.events["ts"].max()) + 1.0
        t_serve = time.perf_counter()
        serve_train = build_trainset(ds, serve_until, weights=weights, half_life_days=half_life)
        served = champion.refit(serve_train)
        top_items, top_scores = serving_candidates(served, SERVE_TOP)
        serve_s = time.perf_counter() - t_serve
        log.info("recommender: serving bundle (refit + %d customers' candidates) in %.1f s", len(top_items), serve_s)
        champion_row = ModelRow(CHAMPION, "champion-candidate", fit_s, scores_all,
                                evaluate(champion, train, test, protocol="new"))
        bar.update()
    rows: list[ModelRow] = []
    for model in tqdm(models, desc="recommender: fit + evaluate", disable=not cfg.progress):
        rows.append(pending[model.name].result())
        log.info("recommender: %s ndcg@10 all %.4f new %.4f (%.1f s)",
                 model.name, rows[-1].all.ndcg, rows[-1].new.ndcg, rows[-1].fit_s)
    rows.append(champion_row)

    cand = rows[-1]
    metrics = {
        "ndcg_at_10_all": cand.all.ndcg, "ndcg_at_10_new": cand.new.ndcg,
        "recall_at_10_all": cand.all.recall, "recall_at_10_new": cand.new.recall,
        "map_at_10_all": cand.all.map, "coverage": cand.all.coverage,
    }
    base = [r for r in rows if r.kind == "baseline"]
    best_all = max(r.all.ndcg for r in base)
    best_new = max(r.new.ndcg for r in base)
    beats = cand.all.ndcg > best_all and cand.new.ndcg > best_new
    if not beats:
        log.warning("recommender: %s does not beat the best baseline on both protocols (%.4f vs %.4f, %.4f vs %.4f)",
                    CHAMPION, cand.all.ndcg, best_all, cand.new.ndcg, best_new)
    params: dict[str, Any] = {
        "model": CHAMPION, "split_date": cfg.split_date, "end_date": cfg.end_date, "seed": cfg.seed, "quick": cfg.quick,
        "validation_days": cfg.validation_days, "validation_windows": n_windows, "half_life_days": half_life,
        "event_weights": json.dumps(weights or {}), "train_users": train.n_users, "train_items": train.n_items,
        "train_interactions": train.weights.nnz, "test_users": len(test.users),
        "train_user_segments": json.dumps(dict(sorted(Counter(s or "none" for s in train.user_segment).items()))),
        **{f"rerank.{k}": v for k, v in asdict(rp).items()},
        **{f"{m.name}.params": json.dumps(getattr(m, "params", {}), default=str)[:500] for m in models},
    }
    with training_run(FAMILY, params, ds.fingerprint, {"source": ds.source, "model": CHAMPION}) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({"beats_best_baseline": float(beats), "best_baseline_ndcg_at_10_all": best_all,
                            "serving_bundle_seconds": serve_s,
                            "best_baseline_ndcg_at_10_new": best_new,
                            **{f"validation.{k}": v for k, v in champion.validation.items()}})
        for r in rows:
            mlflow.log_metrics(metric_row(r))
        mlflow.log_dict(report_dict(rows, ds.fingerprint), "evaluation.json")
        for metric in CURVES:  # plots/ndcg_at_k.png, recall_at_k.png, map_at_k.png
            log_figure(curves_figure(rows, metric), f"{metric}_at_k.png")
        with tempfile.TemporaryDirectory() as d:
            save_recommender_bundle(Path(d), served, serve_train, metrics, top_items, top_scores, split)
            log_bundle(Path(d))
        promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force, client=client)
    return RecommenderResult(rows, params, promotion, ds.fingerprint, metrics, run.info.run_id, beats)


SERVE_TOP = 100  # precomputed candidates per customer in the serving bundle


def serving_candidates(model: Reranker, n: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every training customer's top-n items by the re-ranker (int32 item indices, -1 pads) and their log-odds.

    The candidates and features are features.scoring's; the trees are scored by scikit-learn's compiled predictor
    (the same trees the bundle holds as arrays; a test checks both agree), which is much faster in bulk.
    """
    users = np.arange(model.train.n_users)
    items = np.full((len(users), n), -1, dtype=np.int32)
    scores = np.full((len(users), n), np.nan, dtype=np.float32)
    for start in range(0, len(users), batch):
        us = users[start : start + batch]
        cand = model.scorer.candidates(model.history(us), model.train.split_ts, new_only=False)
        if not len(cand.rows):
            continue
        raw = model.scorer.ranker_all.raw(cand.x)
        order = np.lexsort((cand.items, -raw, cand.rows))  # by user, best first, ties by item index
        rows, its, vals = cand.rows[order], cand.items[order], raw[order]
        first = np.r_[0, np.nonzero(np.diff(rows))[0] + 1]
        rank = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        keep = rank < n
        items[start + rows[keep], rank[keep]] = its[keep]
        scores[start + rows[keep], rank[keep]] = vals[keep]
    return items, scores


def save_recommender_bundle(directory: Path, model: Reranker, train: TrainSet, metrics: dict[str, float],
                            top_items: np.ndarray | None = None, top_scores: np.ndarray | None = None,
                            evaluated_split: float | None = None) -> Path:
    """The artifact the service loads: numpy arrays + JSON id maps, scored by features.scoring.RerankModel.

    `top_items`/`top_scores` (users x n): each customer's precomputed candidates, so a request for a known customer
    needs no tree traversal; `user_purchases` lets the service see when a customer has bought since.
    """
    comp = model.components
    arrays = {
        **model.model.arrays(),
        "user_factors": comp.user_factors,
        "popularity": comp.popularity,
        "user_purchases": np.asarray(train.purchases.sum(axis=1)).ravel().astype(np.float32),
    }
    if top_items is not None and top_scores is not None:
        arrays["user_top_items"] = top_items
        arrays["user_top_scores"] = top_scores
    meta = {
        "family": FAMILY, "model": CHAMPION, "schema_version": SCHEMA_VERSION, "item_ids": train.item_ids,
        "user_ids": train.user_ids, "countries": comp.countries, "scorer": model.model.params(),
        "params": asdict(model.params), "metrics": metrics, "trained_until": train.split_ts,
        "evaluated_split": evaluated_split, "item_categories": train.item_categories, "created_at": time.time(),
    }
    return save_bundle(directory, arrays, meta)


def _scores(s: Scores) -> dict[str, Any]:
    return {"recall": s.recall, "ndcg": s.ndcg, "map": s.map, "coverage": s.coverage, "users": s.users,
            "curves": {m: getattr(s, attr) for m, (attr, _) in CURVES.items()}}


def report_dict(rows: list[ModelRow], fp: str) -> dict[str, Any]:
    return {
        "fingerprint": fp,
        "rows": [{"name": r.name, "kind": r.kind, "fit_seconds": r.fit_s, "all": _scores(r.all), "new": _scores(r.new)}
                 for r in rows],
    }


CURVES = {"ndcg": ("curve", "NDCG@k"), "recall": ("recall_curve", "Recall@k"), "map": ("map_curve", "MAP@k")}


def curves_figure(rows: list[ModelRow], metric: str = "ndcg") -> Any:
    """`metric`@k for k = 1..20 of every model, protocol (a) left and (b) right; the champion candidate drawn bold."""
    if metric not in CURVES:
        raise ValueError(f"metric: expected one of {', '.join(CURVES)}, got {metric!r}")
    attr, label = CURVES[metric]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, proto in zip(axes, ("all", "new")):
        for r in rows:
            curve = getattr(getattr(r, proto), attr)
            if curve:
                width = 2.5 if r.kind == "champion-candidate" else 1.0
                ax.plot(list(curve), list(curve.values()), label=r.name, lw=width)
        ax.set_title(f"{label}, protocol ({'a' if proto == 'all' else 'b'}) {proto} items")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return fig


def markdown_table(rows: list[ModelRow]) -> str:
    lines = ["| model | kind | Recall@10 (a) | NDCG@10 (a) | MAP@10 (a) | Recall@10 (b) | NDCG@10 (b) | MAP@10 (b) "
             "| coverage | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {r.all.recall:.4f} | {r.all.ndcg:.4f} | {r.all.map:.4f} | "
                     f"{r.new.recall:.4f} | "
                     f"{r.new.ndcg:.4f} | {r.new.map:.4f} | {r.all.coverage:.3f} | {r.fit_s:.1f} |")
    return "\n".join(lines)

