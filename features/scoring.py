"""Recommendation scoring with numpy alone: the same functions rank items in offline evaluation and in the service.

A recommender bundle (features/bundle.py) holds item ids, item-item neighbours as CSR arrays, ALS item factors,
per-item statistics, per-country popularity and two gradient-boosted re-rankers as tree arrays ("all" items and
"new" items only); a customer is described by their own history (`History`), so no per-user state is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from features.propensity_model import TreeEnsemble

DAY = 86400.0
NEVER_DAYS = 1e4  # "days since bought" for an item never bought: far beyond any real age, so trees split it off
RECENT_DAYS = 30.0

ITEM_STATS = ("buyers_14_log", "buyers_30_log", "buyers_90_log", "buyers_all_log", "repeat_rate")
FEATURES = (
    "bought_log", "days_since_bought", "interest_log", "knn", "knn_raw", "knn_recent", "knn_rank_log",
    "als", "als_rank_log", "country_share", "user_items_log", "user_total_log", "user_days_since_last",
    "user_baskets_log", "days_before_last_basket",
) + ITEM_STATS
NOT_CANDIDATE = -1e6  # score of items outside the candidate set: below every ranked item, ordered by popularity


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Row-wise indices of the k best scores, best first; `exclude` (bool, same shape) removes entries (-1 pads)."""
    s = np.array(scores, dtype=np.float64, copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores: expected a 2-d array (users x items), got shape {s.shape}")
    if exclude is not None:
        if exclude.shape != s.shape:
            raise ValueError(f"exclude: shape {exclude.shape} differs from scores {s.shape}")
        s[exclude] = -np.inf
    k = min(k, s.shape[1])
    if k <= 0:
        return np.zeros((s.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    # equal scores inside the top k are ordered by item index, so rankings are reproducible
    order = np.lexsort((part, -np.take_along_axis(s, part, axis=1)), axis=1)
    out = np.take_along_axis(part, order, axis=1)
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
        """dense (n x rows) @ self -> (n x cols), touching only the non-zero entries of `dense`."""
        n = dense.shape[0]
        users, rows = np.nonzero(dense)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return np.zeros((n, self.shape[1]), dtype=np.float64)
        # expand every (user, row) non-zero into the row's neighbours, then sum into (user, col) cells
        rep = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = np.repeat(starts, lengths) + offsets
        flat = users[rep] * self.shape[1] + self.indices[pos]
        vals = dense[users, rows][rep] * self.data[pos]
        return np.bincount(flat, weights=vals, minlength=n * self.shape[1]).reshape(n, self.shape[1])


def row_normalize(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return np.divide(x, m, out=np.zeros_like(x, dtype=np.float64), where=m > 0)


def row_rank(x: np.ndarray) -> np.ndarray:
    """Rank of every entry within its row, 0 for the largest (ties by index)."""
    order = np.argsort(-x, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(x.shape[1]), x.shape), axis=1)
    return ranks


@dataclass
class History:
    """What scoring needs to know of a batch of customers, dense over the bundle's items (n x n_items)."""

    interest: np.ndarray  # decayed event-type weights (views, carts, purchases)
    purchases: np.ndarray  # purchase counts
    last_purchase: np.ndarray  # epoch seconds of the last purchase, 0 when none
    country: np.ndarray  # index into the bundle's countries, -1 when unknown

    def __post_init__(self) -> None:
        shape = self.purchases.shape
        for name in ("interest", "last_purchase"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"History.{name}: shape {getattr(self, name).shape} differs from purchases {shape}")
        if self.country.shape != (shape[0],):
            raise ValueError(f"History.country: expected shape ({shape[0]},), got {self.country.shape}")


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
class Candidates:
    """The (user row, item) pairs a re-ranker scores, and their feature matrix (columns in FEATURES order)."""

    rows: np.ndarray
    items: np.ndarray
    x: np.ndarray


@dataclass
class RerankModel:
    """Two-stage recommender: candidates from history, item-kNN, ALS and popularity, ordered by boosted trees."""

    similarity: Csr  # item-item neighbours (BM25 item-kNN)
    item_factors: np.ndarray  # ALS (n_items, f)
    item_stats: np.ndarray  # (n_items, len(ITEM_STATS))
    country_share: np.ndarray  # (n_countries, n_items): share of the country's buyers who bought the item
    ranker_all: TreeEnsemble
    ranker_new: TreeEnsemble
    als_alpha: float = 2.0
    als_regularization: float = 0.05
    n_cf: int = 100  # candidates from each collaborative signal
    n_pop: int = 50  # candidates from recent popularity

    @property
    def n_items(self) -> int:
        return self.item_stats.shape[0]

    def candidates(self, h: History, now: float, new_only: bool) -> Candidates:
        n, ni = h.purchases.shape
        if ni != self.n_items:
            raise ValueError(f"History: {ni} items, the model has {self.n_items}")
        bought = h.purchases > 0
        recent = np.where(bought & (h.last_purchase >= now - RECENT_DAYS * DAY), h.purchases, 0.0)
        knn_raw = self.similarity.left_multiply(h.interest)
        knn_recent = self.similarity.left_multiply(recent)
        users = als_fold_in(self.item_factors, h.interest, self.als_alpha, self.als_regularization)
        als = users @ self.item_factors.T.astype(np.float64)
        pick = np.zeros((n, ni), dtype=bool)
        rows = np.arange(n)[:, None]
        for signal in (knn_raw, als):
            pick[rows, top_k(signal, self.n_cf, bought if new_only else None)] = True
        pick[:, np.argsort(-self.item_stats[:, 1], kind="stable")[: self.n_pop]] = True
        if new_only:
            pick &= ~bought
        else:
            pick |= bought
        r, c = np.nonzero(pick)
        age = np.where(bought, (now - h.last_purchase) / DAY, NEVER_DAYS)
        last_any = np.where(bought, h.last_purchase, -np.inf).max(axis=1) if ni else np.zeros(n)
        user_days = np.where(np.isfinite(last_any), (now - last_any) / DAY, NEVER_DAYS)
        # distinct last-purchase instants in a row: a lower bound on the customer's number of baskets
        stamps = np.sort(np.where(bought, h.last_purchase, 0.0), axis=1)
        baskets = ((np.diff(stamps, axis=1) > 0).sum(axis=1) + (stamps[:, 0] > 0)) if ni else np.zeros(n)
        known = h.country >= 0
        share = np.full((n, ni), np.nan)
        if known.any() and self.country_share.size:
            share[known] = self.country_share[h.country[known]]
        x = np.column_stack([
            np.log1p(h.purchases[r, c]),
            age[r, c],
            np.log1p(np.maximum(h.interest[r, c], 0.0)),
            row_normalize(knn_raw)[r, c],
            knn_raw[r, c],
            row_normalize(knn_recent)[r, c],
            np.log1p(row_rank(knn_raw)[r, c]),
            als[r, c],
            np.log1p(row_rank(als)[r, c]),
            share[r, c],
            np.log1p(bought.sum(axis=1))[r],
            np.log1p(h.purchases.sum(axis=1))[r],
            user_days[r],
            np.log1p(baskets)[r],
            np.where(bought[r, c], age[r, c] - user_days[r], NEVER_DAYS),
            self.item_stats[c],
        ])
        return Candidates(r, c, x)

    def score(self, h: History, now: float, new_only: bool = False) -> np.ndarray:
        """Dense scores (n x n_items): candidates by the re-ranker's log-odds, the rest below them by popularity."""
        cand = self.candidates(h, now, new_only)
        pop = self.item_stats[:, 1]
        out = np.broadcast_to(NOT_CANDIDATE + pop / max(float(pop.max()), 1e-12), h.purchases.shape).copy()
        ranker = self.ranker_new if new_only else self.ranker_all
        if len(cand.rows):
            out[cand.rows, cand.items] = ranker.raw(cand.x)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "sim_indptr": self.similarity.indptr, "sim_indices": self.similarity.indices,
            "sim_data": self.similarity.data,
            "item_factors": self.item_factors, "item_stats": self.item_stats, "country_popularity": self.country_share,
        }
        for name, ranker in (("all", self.ranker_all), ("new", self.ranker_new)):
            out.update({f"ranker_{name}.{k}": v for k, v in ranker.arrays().items()})
        return out

    def params(self) -> dict[str, Any]:
        return {"als_alpha": self.als_alpha, "als_regularization": self.als_regularization, "n_cf": self.n_cf,
                "n_pop": self.n_pop, "features": list(FEATURES), "item_stats": list(ITEM_STATS)}

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "RerankModel":
        """Rebuild from `features.bundle.load_bundle` output; refuses a bundle scored with other features."""
        params = meta.get("scorer")
        if not isinstance(params, Mapping):
            raise ValueError("bundle meta: missing 'scorer' (not a re-rank recommender bundle)")
        if list(params.get("features", [])) != list(FEATURES):
            raise ValueError(
                f"bundle meta.scorer.features: {params.get('features')} differ from this scorer's {list(FEATURES)}"
            )
        try:
            n_items = len(meta["item_ids"])
            sim = Csr(arrays["sim_indptr"], arrays["sim_indices"], arrays["sim_data"], (n_items, n_items))
            rankers = {}
            for name in ("all", "new"):
                prefix = f"ranker_{name}."
                rankers[name] = TreeEnsemble.from_arrays(
                    {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                )
            model = cls(sim, arrays["item_factors"], arrays["item_stats"], arrays["country_popularity"], rankers["all"],
                        rankers["new"], float(params["als_alpha"]), float(params["als_regularization"]),
                        int(params["n_cf"]), int(params["n_pop"]))
        except KeyError as exc:
            raise ValueError(f"bundle: missing {exc.args[0]!r}") from exc
        if model.item_factors.shape[0] != n_items or model.item_stats.shape[0] != n_items:
            raise ValueError(f"bundle: item_factors/item_stats rows differ from len(meta.item_ids) = {n_items}")
        return model


class Scorer(Protocol):
    def score(self, h: History, now: float, new_only: bool = False) -> np.ndarray: ...


def recommend(model: Scorer, h: History, now: float, k: int = 10, new_only: bool = False) -> np.ndarray:
    """Top-k item indices per customer (best first, -1 pads short rows); `new_only` never repeats a purchase."""
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    scores = model.score(h, now, new_only)
    return top_k(scores, k, (h.purchases > 0) if new_only else None)
