"""LightFM with item features (description tokens, price band, categories) and customer features (country, segment).

After fitting, features are folded into plain factor matrices so scoring is `U @ I.T + item_bias` in numpy.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from training.models.base import TrainSet

STOP = frozenset("OF AND THE WITH IN SET PACK A TO FOR".split())


def _tokens(title: str) -> list[str]:
    return [t for t in re.findall(r"[A-Z]{3,}", title.upper()) if t not in STOP]


def item_features(train: TrainSet, min_df: int = 3, max_vocab: int = 2000) -> tuple[sp.csr_matrix, list[str]]:
    df = Counter(t for title in train.item_title for t in set(_tokens(title)))
    vocab = [t for t, n in df.most_common(max_vocab) if n >= min_df]
    price = train.item_price
    edges = np.quantile(price[price > 0], [0.2, 0.4, 0.6, 0.8]) if (price > 0).any() else np.array([])
    cats = sorted({c for cs in train.item_categories for c in cs})
    names = [f"item:{i}" for i in range(train.n_items)] + [f"tok:{t}" for t in vocab] + \
        [f"price:{b}" for b in range(len(edges) + 1)] + [f"cat:{c}" for c in cats]
    col = {n: j for j, n in enumerate(names)}
    rows, cols = [], []
    for i in range(train.n_items):
        feats = [f"item:{i}"] + [f"tok:{t}" for t in set(_tokens(train.item_title[i])) if f"tok:{t}" in col]
        if price[i] > 0:
            feats.append(f"price:{int(np.searchsorted(edges, price[i]))}")
        feats += [f"cat:{c}" for c in train.item_categories[i]]
        rows += [i] * len(feats)
        cols += [col[f] for f in feats]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(train.n_items, len(names)))
    return normalize_rows(m), names


def user_features(train: TrainSet) -> tuple[sp.csr_matrix, list[str]]:
    countries = sorted({c for c in train.user_country if c})
    segments = sorted({s for s in train.user_segment if s})
    names = [f"user:{u}" for u in range(train.n_users)] + [f"country:{c}" for c in countries] + [f"segment:{s}" for s in segments]
    col = {n: j for j, n in enumerate(names)}
    rows, cols = [], []
    for u in range(train.n_users):
        feats = [f"user:{u}"]
        if train.user_country[u]:
            feats.append(f"country:{train.user_country[u]}")
        if train.user_segment and train.user_segment[u]:
            feats.append(f"segment:{train.user_segment[u]}")
        rows += [u] * len(feats)
        cols += [col[f] for f in feats]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(train.n_users, len(names)))
    return normalize_rows(m), names


def normalize_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    s = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(s, 1e-12)).dot(m).tocsr().astype(np.float32)


class LightFMHybrid:
    name = "lightfm"

    def __init__(self, no_components: int = 48, epochs: int = 20, loss: str = "warp", learning_rate: float = 0.05,
                 item_alpha: float = 1e-6, user_alpha: float = 1e-6, seed: int = 7, num_threads: int = 1) -> None:
        self.params = dict(no_components=no_components, loss=loss, learning_rate=learning_rate,
                           item_alpha=item_alpha, user_alpha=user_alpha, random_state=seed)
        self.epochs, self.num_threads = epochs, num_threads

    def fit(self, train: TrainSet) -> None:
        self.if_, self.item_feature_names = item_features(train)
        self.uf_, self.user_feature_names = user_features(train)
        inter = (train.weights > 0).astype(np.float32).tocoo()
        w = train.weights.tocoo()
        weights = sp.coo_matrix((np.log1p(np.maximum(w.data, 0)) + 1.0, (w.row, w.col)), shape=w.shape, dtype=np.float32)
        self.model = LightFM(**self.params)
        self.model.fit(inter, user_features=self.uf_, item_features=self.if_, sample_weight=weights,
                       epochs=self.epochs, num_threads=self.num_threads)
        ub, ue = self.model.get_user_representations(self.uf_)
        ib, ie = self.model.get_item_representations(self.if_)
        self.user_factors, self.user_bias = ue.astype(np.float32), ub.astype(np.float32)
        self.item_factors, self.item_bias = ie.astype(np.float32), ib.astype(np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T + self.item_bias

    def fold_in_user(self, features: list[str]) -> np.ndarray:
        """The vector of a cold customer known only by features such as `country:France`."""
        idx = [self.user_feature_names.index(f) for f in features if f in self.user_feature_names]
        if not idx:
            return np.zeros(self.user_factors.shape[1], np.float32)
        return np.asarray(self.model.user_embeddings[idx].mean(axis=0), dtype=np.float32)
