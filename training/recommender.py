"""The recommender family job: fit every baseline and model, evaluate both protocols side by side, tune and fit the
blend, log everything to one MLflow run, save the numpy bundle, register and gate the promotion."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from tqdm import tqdm

from features.bundle import save_bundle
from training.config import TrainConfig
from training.data import Dataset, TestSet, build_testset, build_trainset, load_dataset, to_ts
from training.evaluation import Scores, evaluate
from training.models.base import Model, TrainSet
from training.models.baselines import Popularity, PopularityByCountry, RepeatPurchase
from training.models.blend import Blend, BlendParams, tune_weights
from training.models.implicit_models import ALS, BPR, ItemKNN
from training.models.lightfm_hybrid import LightFMHybrid
from training.promote import PromotionResult, register_and_promote
from training.tracking import configure, log_bundle, log_figure, training_run

FAMILY = "recsvc-recommender"
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
    weights: dict[str, float]
    promotion: PromotionResult | None
    fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None


def candidates(cfg: TrainConfig) -> list[Model]:
    p = cfg.recommender
    quick = cfg.quick
    return [
        Popularity(),
        PopularityByCountry(),
        RepeatPurchase(half_life_days=float(p.get("repeat_half_life_days", 60))),
        ItemKNN("cosine", k=int(p.get("knn_k", 50))),
        ItemKNN("bm25", k=int(p.get("knn_k", 50))),
        ALS(factors=int(p.get("als_factors", 64)), iterations=3 if quick else int(p.get("als_iterations", 15)),
            regularization=float(p.get("als_regularization", 0.05)), alpha=float(p.get("als_alpha", 2.0)), seed=cfg.seed),
        BPR(factors=int(p.get("bpr_factors", 64)), iterations=5 if quick else int(p.get("bpr_iterations", 60)), seed=cfg.seed),
        LightFMHybrid(no_components=int(p.get("lightfm_components", 48)), epochs=2 if quick else int(p.get("lightfm_epochs", 10)),
                      loss=str(p.get("lightfm_loss", "warp")), seed=cfg.seed),
    ]


def blend_params(cfg: TrainConfig) -> BlendParams:
    p = cfg.recommender
    return BlendParams(
        repeat_half_life_days=float(p.get("repeat_half_life_days", 60)), knn_k=int(p.get("knn_k", 50)),
        als_factors=int(p.get("als_factors", 64)), als_iterations=3 if cfg.quick else int(p.get("als_iterations", 15)),
        als_regularization=float(p.get("als_regularization", 0.05)), als_alpha=float(p.get("als_alpha", 2.0)), seed=cfg.seed,
    )


def _subsample(test: TestSet, n: int, seed: int) -> TestSet:
    if len(test.users) <= n:
        return test
    sel = np.sort(np.random.default_rng(seed).choice(len(test.users), n, replace=False))
    return TestSet(users=test.users[sel], relevant=[test.relevant[i] for i in sel])


def train_recommender(cfg: TrainConfig, ds: Dataset | None = None) -> RecommenderResult:
    configure(cfg.tracking_uri)
    ds = ds or load_dataset(cfg.source, cfg.data_dir)
    split, end = to_ts(cfg.split_date), to_ts(cfg.end_date)
    train = build_trainset(ds, split)
    test = build_testset(ds, train, split, end)
    if len(test.users) == 0:
        raise ValueError(f"no test customers: no purchases between {cfg.split_date} and {cfg.end_date} by earlier buyers")
    rows: list[ModelRow] = []
    models = candidates(cfg)
    for model in tqdm(models, desc="recommender: fit + evaluate", disable=not cfg.progress):
        t = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t
        kind = "baseline" if model.name in BASELINES else "model"
        rows.append(ModelRow(model.name, kind, fit_s, evaluate(model.score, train, test, "all"), evaluate(model.score, train, test, "new")))

    # the blend: weights tuned on a validation window at the end of the training period
    vsplit = split - cfg.validation_days * DAY
    vtrain = build_trainset(ds, vsplit)
    vtest = _subsample(build_testset(ds, vtrain, vsplit, split), 300 if cfg.quick else 800, cfg.seed)
    blend = Blend(blend_params(cfg))
    with tqdm(total=3, desc="recommender: blend", disable=not cfg.progress) as bar:
        weights = dict(cfg.recommender.get("blend_weights", {}))
        if weights:
            vvalue = float("nan")
        elif len(vtest.users):
            blend.fit(vtrain)
            weights, vvalue = tune_weights(
                blend, vtrain, vtest,
                lambda f: evaluate(f, vtrain, vtest, "all", curve=False).ndcg + evaluate(f, vtrain, vtest, "new", curve=False).ndcg,
            )
        else:
            weights, vvalue = dict(blend.weights), float("nan")
        bar.update()
        final = Blend(blend_params(cfg), weights)
        t = time.perf_counter()
        final.fit(train)
        fit_s = time.perf_counter() - t
        bar.update()
        rows.append(ModelRow("blend", "champion-candidate", fit_s, evaluate(final.score, train, test, "all"), evaluate(final.score, train, test, "new")))
        bar.update()

    cand = rows[-1]
    metrics = {
        "ndcg_at_10_all": cand.all.ndcg, "ndcg_at_10_new": cand.new.ndcg,
        "recall_at_10_all": cand.all.recall, "recall_at_10_new": cand.new.recall,
        "map_at_10_all": cand.all.map, "coverage": cand.all.coverage,
    }
    params = {"split_date": cfg.split_date, "end_date": cfg.end_date, "seed": cfg.seed, "quick": cfg.quick,
              "validation_days": cfg.validation_days, "validation_objective": vvalue,
              **{f"blend.{k}": v for k, v in asdict(blend_params(cfg)).items()},
              **{f"weight.{k}": v for k, v in weights.items()}}
    with training_run(FAMILY, params, ds.fingerprint, {"source": ds.source}) as run:
        mlflow.log_metrics(metrics)
        for r in rows:
            mlflow.log_metrics({
                f"{r.name}.ndcg_at_10_all": r.all.ndcg, f"{r.name}.ndcg_at_10_new": r.new.ndcg,
                f"{r.name}.recall_at_10_all": r.all.recall, f"{r.name}.recall_at_10_new": r.new.recall,
                f"{r.name}.map_at_10_all": r.all.map, f"{r.name}.map_at_10_new": r.new.map,
                f"{r.name}.coverage": r.all.coverage, f"{r.name}.fit_seconds": r.fit_s,
            })
        mlflow.log_dict(report_dict(rows, weights, ds.fingerprint), "evaluation.json")
        log_figure(curves_figure(rows), "ndcg_at_k.png")
        with tempfile.TemporaryDirectory() as d:
            save_recommender_bundle(Path(d), final, train, metrics, weights)
            log_bundle(Path(d))
        promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force)
    return RecommenderResult(rows, weights, promotion, ds.fingerprint, metrics, run.info.run_id)


def save_recommender_bundle(directory: Path, blend: Blend, train: TrainSet, metrics: dict[str, float], weights: dict[str, float]) -> Path:
    m = blend.model
    return save_bundle(
        directory,
        {
            "sim_indptr": m.similarity.indptr, "sim_indices": m.similarity.indices, "sim_data": m.similarity.data,
            "popularity": m.popularity, "country_popularity": m.country_popularity, "item_factors": m.item_factors,
        },
        {
            "family": FAMILY, "model": "blend", "item_ids": train.item_ids, "countries": blend.country.countries,
            "weights": weights, "repeat_half_life_days": m.repeat_half_life_days, "als_alpha": m.als_alpha,
            "als_regularization": m.als_regularization, "metrics": metrics, "trained_until": train.split_ts,
            "created_at": time.time(),
        },
    )


def report_dict(rows: list[ModelRow], weights: dict[str, float], fp: str) -> dict[str, Any]:
    return {
        "fingerprint": fp, "weights": weights,
        "rows": [{"name": r.name, "kind": r.kind, "fit_seconds": r.fit_s,
                  "all": {"recall": r.all.recall, "ndcg": r.all.ndcg, "map": r.all.map, "coverage": r.all.coverage, "users": r.all.users},
                  "new": {"recall": r.new.recall, "ndcg": r.new.ndcg, "map": r.new.map, "coverage": r.new.coverage, "users": r.new.users}}
                 for r in rows],
    }


def curves_figure(rows: list[ModelRow]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, proto in zip(axes, ("all", "new")):
        for r in rows:
            curve = getattr(r, proto).curve
            if curve:
                ax.plot(list(curve), list(curve.values()), label=r.name, lw=2.5 if r.kind == "champion-candidate" else 1)
        ax.set_title(f"NDCG@k, protocol ({'a' if proto == 'all' else 'b'}) {proto} items")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return fig


def markdown_table(rows: list[ModelRow]) -> str:
    lines = ["| model | kind | Recall@10 (a) | NDCG@10 (a) | MAP@10 (a) | Recall@10 (b) | NDCG@10 (b) | MAP@10 (b) | coverage | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {r.all.recall:.4f} | {r.all.ndcg:.4f} | {r.all.map:.4f} | {r.new.recall:.4f} | "
                     f"{r.new.ndcg:.4f} | {r.new.map:.4f} | {r.all.coverage:.3f} | {r.fit_s:.1f} |")
    return "\n".join(lines)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)
