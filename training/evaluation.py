"""Ranking metrics and the evaluation protocol; top-k lists come from features.scoring (recommend/top_k), as in the
service.

Protocol "all": every item the customer bought in the test window is relevant. Protocol "new": only items the
customer never bought before the split are relevant, and items bought before are never recommended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass
class Scores:
    recall: float
    ndcg: float
    map: float
    coverage: float
    users: int
    curve: dict[int, float]  # ndcg@k for k = 1..20


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
    customers left with none are skipped. `curve` adds NDCG@1..20.
    """
    if protocol not in ("all", "new"):
        raise ValueError(f"protocol: expected 'all' or 'new', got {protocol!r}")
    _check_k(k)
    new_only = protocol == "new"
    rank = ranker(model, train)
    depth = max(k, 20) if curve else k
    bought = train.purchases
    rec, nd, mp = [], [], []
    curve_sum = np.zeros(20)
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
                curve_sum += [ndcg_at_k(items, relevant, kk) for kk in range(1, 21)]
            shown.update(items[:k])
    n = max(len(nd), 1)
    return Scores(
        recall=float(np.mean(rec)) if rec else 0.0,
        ndcg=float(np.mean(nd)) if nd else 0.0,
        map=float(np.mean(mp)) if mp else 0.0,
        coverage=len(shown) / max(train.n_items, 1),
        users=len(nd),
        curve={kk + 1: float(curve_sum[kk] / n) for kk in range(20)} if curve else {},
    )
