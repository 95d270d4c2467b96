"""Recommendation scoring with numpy alone: the same functions rank items in offline evaluation and in the service.

A recommender bundle (features/bundle.py) holds item ids, an item-item neighbour matrix as CSR arrays, popularity
vectors (global and per country) and the blend weights; a customer is described by their own history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY = 86400.0


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Row-wise indices of the k best scores, best first; `exclude` (bool, same shape) removes entries."""
    s = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None:
        s[exclude] = -np.inf
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    out = np.take_along_axis(part, order, axis=1)
    # drop excluded entries that filled a row shorter than k
    if exclude is not None:
        valid = np.isfinite(np.take_along_axis(s, out, axis=1))
        out = np.where(valid, out, -1)
    return out


@dataclass
class Csr:
    """A CSR matrix as three plain arrays (what the bundle stores), with the one product scoring needs."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    def left_multiply(self, dense: np.ndarray) -> np.ndarray:
        """dense (n x rows) @ self -> (n x cols)."""
        out = np.zeros((dense.shape[0], self.shape[1]), dtype=np.float64)
        rows = np.nonzero(dense.any(axis=0))[0]
        for r in rows:
            lo, hi = self.indptr[r], self.indptr[r + 1]
            if hi > lo:
                out[:, self.indices[lo:hi]] += np.outer(dense[:, r], self.data[lo:hi])
        return out


def row_normalize(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return np.divide(x, m, out=np.zeros_like(x, dtype=np.float64), where=m > 0)


@dataclass
class History:
    """What scoring needs to know of a batch of customers, dense over the bundle's items (n x n_items)."""

    interest: np.ndarray  # decayed event-type weights (views, carts, purchases)
    purchases: np.ndarray  # purchase counts
    last_purchase: np.ndarray  # epoch seconds of the last purchase, 0 when none
    country: np.ndarray  # index into the bundle's countries, -1 when unknown


def als_fold_in(item_factors: np.ndarray, interest: np.ndarray, alpha: float, regularization: float) -> np.ndarray:
    """ALS user vectors from interest rows (n x n_items), solved in closed form against fixed item factors."""
    y = item_factors.astype(np.float64)
    yty = y.T @ y
    eye = regularization * np.eye(y.shape[1])
    out = np.zeros((interest.shape[0], y.shape[1]))
    for r in range(interest.shape[0]):
        items = np.nonzero(interest[r] > 0)[0]
        if len(items) == 0:
            continue
        c = 1.0 + alpha * np.log1p(interest[r, items])
        yi = y[items]
        out[r] = np.linalg.solve(yty + (yi.T * (c - 1.0)) @ yi + eye, (yi.T * c).sum(axis=1))
    return out


@dataclass
class BlendModel:
    """Final scorer: a weighted sum of row-normalized signals (repeat, item-kNN, ALS, popularity, country)."""

    similarity: Csr
    popularity: np.ndarray  # (n_items,)
    country_popularity: np.ndarray  # (n_countries, n_items)
    w_repeat: float
    w_knn: float
    w_pop: float
    w_country: float
    repeat_half_life_days: float
    item_factors: np.ndarray  # ALS, (n_items, f)
    w_als: float
    als_alpha: float
    als_regularization: float

    def repeat_scores(self, h: History, now: float) -> np.ndarray:
        age = np.where(h.last_purchase > 0, (now - h.last_purchase) / DAY, np.inf)
        recency = np.power(2.0, -age / self.repeat_half_life_days)
        return np.log1p(h.purchases) * recency

    def components(self, h: History, now: float) -> dict[str, np.ndarray]:
        """Each signal, row-normalized to [0, 1]; the score is their weighted sum."""
        out = {
            "repeat": row_normalize(self.repeat_scores(h, now)),
            "pop": np.broadcast_to(self.popularity / max(self.popularity.max(), 1e-12), h.interest.shape),
        }
        if self.w_knn:
            out["knn"] = row_normalize(self.similarity.left_multiply(h.interest))
        if self.w_country:
            cpop = np.zeros_like(h.interest, dtype=np.float64)
            known = h.country >= 0
            if known.any() and self.country_popularity.size:
                cpop[known] = row_normalize(self.country_popularity[h.country[known]])
            out["country"] = cpop
        if self.w_als:
            u = als_fold_in(self.item_factors, h.interest, self.als_alpha, self.als_regularization)
            out["als"] = row_normalize(np.maximum(u @ self.item_factors.T, 0.0))
        return out

    @property
    def weights(self) -> dict[str, float]:
        return {"repeat": self.w_repeat, "knn": self.w_knn, "als": self.w_als, "pop": self.w_pop, "country": self.w_country}

    def score(self, h: History, now: float) -> np.ndarray:
        return combine(self.components(h, now), self.weights)


def combine(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    out = np.zeros(next(iter(components.values())).shape)
    for name, comp in components.items():
        if weights.get(name):
            out += weights[name] * comp
    return out
