"""The final recommender: a blend of repeat purchase, BM25 item-kNN, ALS and popularity, scored by
features.scoring.BlendModel (numpy only, the code the service runs) from each customer's history.

Weights are tuned on a validation window carved from the end of the training period, never on the test period.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from features.scoring import BlendModel, Csr, History, combine
from training.models.base import TrainSet
from training.models.baselines import PopularityByCountry, recent_popularity
from training.models.implicit_models import ALS, ItemKNN

if TYPE_CHECKING:
    from training.data import TestSet

DEFAULT_WEIGHTS = {"repeat": 1.0, "knn": 0.2, "als": 0.3, "pop": 0.05, "country": 0.0}


def history(train: TrainSet, users: np.ndarray, country_index: dict[str, int]) -> History:
    return History(
        interest=train.weights[users].toarray().astype(np.float64),
        purchases=train.purchases[users].toarray().astype(np.float64),
        last_purchase=train.last_ts[users].toarray(),
        country=np.array([country_index.get(train.user_country[u] or "", -1) for u in users]),
    )


@dataclass
class BlendParams:
    repeat_half_life_days: float = 60.0
    knn_k: int = 50
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.05
    als_alpha: float = 2.0
    seed: int = 7


class Blend:
    name = "blend"

    def __init__(self, params: BlendParams | None = None, weights: dict[str, float] | None = None) -> None:
        self.params = params or BlendParams()
        self.weights = dict(weights or DEFAULT_WEIGHTS)

    def fit(self, train: TrainSet) -> None:
        p = self.params
        self.train = train
        self.knn = ItemKNN("bm25", k=p.knn_k)
        self.knn.fit(train)
        self.als = ALS(factors=p.als_factors, iterations=p.als_iterations, regularization=p.als_regularization,
                       alpha=p.als_alpha, seed=p.seed)
        self.als.fit(train)
        self.country = PopularityByCountry()
        self.country.fit(train)
        self.country_index = {c: i for i, c in enumerate(self.country.countries)}
        self.popularity = recent_popularity(train)
        self._build()

    def _build(self) -> None:
        sim = self.knn.similarity
        w = self.weights
        self.model = BlendModel(
            similarity=Csr(sim.indptr.copy(), sim.indices.copy(), sim.data.astype(np.float64), sim.shape),
            popularity=self.popularity.astype(np.float64),
            country_popularity=self.country.by_country.astype(np.float64),
            w_repeat=w["repeat"], w_knn=w["knn"], w_pop=w["pop"], w_country=w["country"],
            repeat_half_life_days=self.params.repeat_half_life_days,
            item_factors=self.als.item_factors, w_als=w["als"],
            als_alpha=self.params.als_alpha, als_regularization=self.params.als_regularization,
        )

    def set_weights(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self._build()

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.model.score(history(self.train, users, self.country_index), self.train.split_ts)


WEIGHT_GRID = {
    "knn": (0.0, 0.1, 0.3),
    "als": (0.0, 0.2, 0.5, 1.0),
    "pop": (0.0, 0.05, 0.2),
    "country": (0.0, 0.1),
}


def weight_grid() -> list[dict[str, float]]:
    keys = list(WEIGHT_GRID)
    return [{"repeat": 1.0, **dict(zip(keys, combo))} for combo in itertools.product(*WEIGHT_GRID.values())]


def tune_weights(blend: Blend, train: TrainSet, test: "TestSet", objective: "Callable[[Callable[[np.ndarray], np.ndarray]], float]") -> tuple[dict[str, float], float]:
    """Grid search of the blend weights: components are computed once, then only re-weighted."""
    everything = {k: 1.0 for k in ("repeat", "knn", "als", "pop", "country")}
    blend.set_weights(everything)
    rows = {int(u): r for r, u in enumerate(test.users)}
    comps = blend.model.components(history(train, test.users, blend.country_index), train.split_ts)
    best_w, best = dict(DEFAULT_WEIGHTS), -1.0
    for w in weight_grid():
        def score(users: np.ndarray, w: dict[str, float] = w) -> np.ndarray:
            idx = [rows[int(u)] for u in users]
            return combine({k: v[idx] for k, v in comps.items()}, w)

        value = objective(score)
        if value > best:
            best_w, best = w, value
    blend.set_weights(best_w)
    return best_w, best
