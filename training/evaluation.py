"""Ranking metrics and the evaluation protocol; metrics rank through features.scoring.top_k, as the service does.

Protocol "all": every item the customer bought in the test window is relevant. Protocol "new": only items the
customer never bought before the split are relevant, and items bought before are never recommended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from features.scoring import top_k
from training.data import TestSet
from training.models.base import TrainSet

K = 10


def recall_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(dcg / ideal)


def map_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
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


def evaluate(
    score_fn: Callable[[np.ndarray], np.ndarray],
    train: TrainSet,
    test: TestSet,
    protocol: str = "all",
    k: int = K,
    batch: int = 512,
    curve: bool = True,
) -> Scores:
    """Rank every test user's items with `score_fn(user_indices) -> (n, n_items)` and average the metrics."""
    bought = train.purchases
    rec, nd, mp, users = [], [], [], 0
    curve_sum = np.zeros(20)
    shown: set[int] = set()
    for start in range(0, len(test.users), batch):
        us = test.users[start : start + batch]
        scores = score_fn(us)
        exclude = None
        if protocol == "new":
            exclude = bought[us].toarray() > 0
        ranked = top_k(scores, max(k, 20), exclude)
        for row, u_pos in zip(ranked, range(start, start + len(us))):
            relevant = test.relevant[u_pos]
            if protocol == "new":
                relevant = {i for i in relevant if bought[test.users[u_pos], i] == 0}
                if not relevant:
                    continue
            items = [int(i) for i in row if i >= 0]
            users += 1
            rec.append(recall_at_k(items, relevant, k))
            nd.append(ndcg_at_k(items, relevant, k))
            mp.append(map_at_k(items, relevant, k))
            if curve:
                curve_sum += [ndcg_at_k(items, relevant, kk) for kk in range(1, 21)]
            shown.update(items[:k])
    n = max(users, 1)
    return Scores(
        recall=float(np.mean(rec)) if rec else 0.0,
        ndcg=float(np.mean(nd)) if nd else 0.0,
        map=float(np.mean(mp)) if mp else 0.0,
        coverage=len(shown) / max(train.n_items, 1),
        users=users,
        curve={kk + 1: float(curve_sum[kk] / n) for kk in range(20)} if curve else {},
    )


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
