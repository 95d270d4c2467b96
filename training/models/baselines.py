"""Baselines every learned model must beat: popularity (global and per country) and recency-weighted repeat purchase."""

from __future__ import annotations

import numpy as np

from training.models.base import TrainSet

DAY = 86400.0


def recent_popularity(train: TrainSet, days: float = 90.0) -> np.ndarray:
    """Distinct buyers per item over the last `days` before the split (a popularity that is not years stale)."""
    recent = train.last_ts.copy()
    recent.data = (recent.data >= train.split_ts - days * DAY).astype(np.float64)
    return np.asarray(recent.sum(axis=0)).ravel() + 1e-3 * np.asarray((train.purchases > 0).sum(axis=0)).ravel()


class Popularity:
    name = "popularity"

    def fit(self, train: TrainSet) -> None:
        self.pop = recent_popularity(train).astype(np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()


class PopularityByCountry:
    name = "popularity_country"

    def fit(self, train: TrainSet) -> None:
        self.global_pop = recent_popularity(train)
        self.countries = sorted({c for c in train.user_country if c})
        cidx = {c: i for i, c in enumerate(self.countries)}
        self.user_country = np.array([cidx.get(c, -1) if c else -1 for c in train.user_country])
        bought = (train.purchases > 0).astype(np.float64).tocsr()
        onehot = np.zeros((len(self.countries), train.n_users))
        known = self.user_country >= 0
        onehot[self.user_country[known], np.nonzero(known)[0]] = 1.0
        self.by_country = np.asarray((bought.T @ onehot.T).T)  # countries x items

    def score(self, users: np.ndarray) -> np.ndarray:
        g = self.global_pop / self.global_pop.max()
        out = np.broadcast_to(g, (len(users), len(g))).copy()
        c = self.user_country[users]
        known = c >= 0
        local = self.by_country[c[known]]
        out[known] = local / np.maximum(local.max(axis=1, keepdims=True), 1e-12) + 0.01 * g
        return out.astype(np.float32)


class RepeatPurchase:
    """Score = log(1 + times bought) x 2^(-age / half-life), ties broken by popularity."""

    name = "repeat"

    def __init__(self, half_life_days: float = 60.0) -> None:
        self.half_life_days = half_life_days

    def fit(self, train: TrainSet) -> None:
        self.train = train
        self.pop = recent_popularity(train)

    def score(self, users: np.ndarray) -> np.ndarray:
        t = self.train
        counts = t.purchases[users].toarray()
        last = t.last_ts[users].toarray()
        age = np.where(last > 0, (t.split_ts - last) / DAY, np.inf)
        rep = np.log1p(counts) * np.power(2.0, -age / self.half_life_days)
        return (rep + 1e-6 * self.pop / self.pop.max()).astype(np.float32)
