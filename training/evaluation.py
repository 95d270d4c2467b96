"""Ranking metrics and the evaluation protocol; top-k lists come from features.scoring (recommend/top_k), as in the
service.

Protocol "all": every item the customer bought in the test window is relevant. Protocol "new": only items the
customer never bought before the split are relevant, and items bought before are never recommended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from features.scoring import top_k
from training.data import TestSet
from training.models.base import Model, TrainSet

K = 10


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")


def recall_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    """Share of the relevant items found in the top k."""
    _check_k(k)
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    """Binary-relevance NDCG; the ideal DCG places min(k, |relevant|) hits first."""
    _check_k(k)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(dcg / ideal)


def map_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    """Average precision at the hits in the top k, normalized by min(k, |relevant|)."""
    _check_k(k)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k]):
        if item in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant))


_DISCOUNT = 1.0 / np.log2(np.arange(2, 202))  # 1 / log2(rank + 1) for ranks 1..200


def metric_curves(ranked: Sequence[int], relevant: set[int], depth: int = 20) -> np.ndarray:
    """NDCG, Recall and MAP at every k = 1..depth in one pass: rows 0, 1, 2 of a (3, depth) array, each entry equal
    to `ndcg_at_k`, `recall_at_k`, `map_at_k` at that k."""
    _check_k(depth)
    out = np.zeros((3, depth))
    if not relevant:
        return out
    hits = np.zeros(depth)
    top = list(ranked[:depth])
    hits[: len(top)] = [item in relevant for item in top]
    found = np.cumsum(hits)
    ks = np.arange(1, depth + 1)
    discount = _DISCOUNT[:depth] if depth <= len(_DISCOUNT) else 1.0 / np.log2(ks + 1)
    ideal = np.cumsum(discount)[np.minimum(ks, len(relevant)) - 1]
    out[0] = np.cumsum(hits * discount) / ideal
    out[1] = found / len(relevant)
    out[2] = np.cumsum(hits * found / ks) / np.minimum(ks, len(relevant))
    return out


@dataclass
class Scores:
    recall: float
    ndcg: float
    map: float
    coverage: float
    users: int
    curve: dict[int, float]  # ndcg@k for k = 1..20
    recall_curve: dict[int, float] = field(default_factory=dict)  # recall@k for k = 1..20
    map_curve: dict[int, float] = field(default_factory=dict)  # map@k for k = 1..20


ScoreFn = Callable[[np.ndarray], np.ndarray]


class Recommends(Protocol):
    def recommend(self, users: np.ndarray, k: int, new_only: bool) -> np.ndarray: ...


def ranker(model: Model | Recommends | ScoreFn, train: TrainSet) -> Callable[[np.ndarray, int, bool], np.ndarray]:
    """(users, k, new_only) -> top-k item indices: a model's own `recommend` (the service path), else its scores
    ranked by features.scoring.top_k with the customer's purchases excluded for "new"."""
    if hasattr(model, "recommend"):
        return model.recommend  # type: ignore[union-attr]
    score: ScoreFn = model.score if hasattr(model, "score") else model  # type: ignore[union-attr,assignment]

    def rank(users: np.ndarray, k: int, new_only: bool) -> np.ndarray:
        scores = score(users)
        if scores.shape != (len(users), train.n_items):
            raise ValueError(f"score(users): shape {scores.shape}, expected {(len(users), train.n_items)}")
        return top_k(scores, k, (train.purchases[users].toarray() > 0) if new_only else None)

    return rank


def evaluate(
    model: Model | Recommends | ScoreFn,
    train: TrainSet,
    test: TestSet,
    k: int = K,
    protocol: str = "all",
    batch: int = 512,
    curve: bool = True,
) -> Scores:
    """Average Recall/NDCG/MAP@k over the test customers, ranking in batches as the service does.

    "new": items bought before the split are never recommended, only never-bought items count as relevant, and
    customers left with none are skipped. `curve` adds NDCG, Recall and MAP at k = 1..20.
    """
    if protocol not in ("all", "new"):
        raise ValueError(f"protocol: expected 'all' or 'new', got {protocol!r}")
    _check_k(k)
    new_only = protocol == "new"
    rank = ranker(model, train)
    depth = max(k, 20) if curve else k
    bought = train.purchases
    rec, nd, mp = [], [], []
    curve_sum = np.zeros((3, 20))  # ndcg, recall, map at k = 1..20
    shown: set[int] = set()
    for start in range(0, len(test.users), batch):
        us = test.users[start : start + batch]
        ranked = rank(us, depth, new_only)
        for row, u, relevant in zip(ranked, us, test.relevant[start : start + batch]):
            if new_only:
                relevant = relevant - set(bought[u].indices.tolist())
                if not relevant:
                    continue
            items = [int(i) for i in row if i >= 0]
            rec.append(recall_at_k(items, relevant, k))
            nd.append(ndcg_at_k(items, relevant, k))
            mp.append(map_at_k(items, relevant, k))
            if curve:
                curve_sum += metric_curves(items, relevant, 20)
            shown.update(items[:k])
    n = max(len(nd), 1)
    return Scores(
        recall=float(np.mean(rec)) if rec else 0.0,
        ndcg=float(np.mean(nd)) if nd else 0.0,
        map=float(np.mean(mp)) if mp else 0.0,
        coverage=len(shown) / max(train.n_items, 1),
        users=len(nd),
        curve={kk + 1: float(curve_sum[0, kk] / n) for kk in range(20)} if curve else {},
        recall_curve={kk + 1: float(curve_sum[1, kk] / n) for kk in range(20)} if curve else {},
        map_curve={kk + 1: float(curve_sum[2, kk] / n) for kk in range(20)} if curve else {},
    )
