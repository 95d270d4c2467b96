"""Collaborative filtering on `implicit`: item-kNN (cosine, BM25), ALS and BPR. Scores are computed with numpy from
the learned factors or similarities, so the same math runs in the service."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from implicit.utils import ParameterWarning

from training.models.base import TrainSet


def confidence(train: TrainSet, alpha: float) -> sp.csr_matrix:
    c = train.weights.astype(np.float64).tocsr(copy=True)
    c.data = 1.0 + alpha * np.log1p(np.maximum(c.data, 0.0))
    return c


class ItemKNN:
    def __init__(self, kind: str = "cosine", k: int = 50, alpha: float = 1.0) -> None:
        self.kind, self.k, self.alpha = kind, k, alpha
        self.name = f"itemknn_{kind}"

    def fit(self, train: TrainSet) -> None:
        ui = confidence(train, self.alpha)
        model = CosineRecommender(K=self.k) if self.kind == "cosine" else BM25Recommender(K=self.k)
        with warnings.catch_warnings():  # implicit's BM25 weighting converts to COO internally, then warns about it
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(ui, show_progress=False)
        sim = model.similarity.tocsr().astype(np.float32)
        sim.setdiag(0.0)  # an item is not its own neighbour: repeats are the repeat model's job
        sim.eliminate_zeros()
        self.similarity = sim
        self.history = train.weights

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.history[users] @ self.similarity).todense(), dtype=np.float32)


class ALS:
    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15, alpha: float = 2.0, seed: int = 7) -> None:
        self.params = dict(factors=factors, regularization=regularization, iterations=iterations, random_state=seed)
        self.alpha, self.regularization = alpha, regularization

    def fit(self, train: TrainSet) -> None:
        model = AlternatingLeastSquares(**self.params, num_threads=1, calculate_training_loss=False)
        model.fit(confidence(train, self.alpha), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


class BPR:
    name = "bpr"

    def __init__(self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01, iterations: int = 60, seed: int = 7) -> None:
        self.params = dict(factors=factors, learning_rate=learning_rate, regularization=regularization,
                           iterations=iterations, random_state=seed)

    def fit(self, train: TrainSet) -> None:
        model = BayesianPersonalizedRanking(**self.params, num_threads=1)
        model.fit((train.weights > 0).astype(np.float32).tocsr(), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T
