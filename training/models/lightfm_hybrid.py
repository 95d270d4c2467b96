"""The LightFM hybrid recommender: item features (description tokens, price band, categories) and customer features
(country, segment) beside identity features, folded after fitting into plain numpy factors and biases.

Scoring is `user_factors[users] @ item_factors.T + item_bias` (numpy alone); cold customers known only by country or
segment get a vector from `fold_in_user`, built from `cold_user_features` / `cold_user_embeddings` (numpy too).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from training.models.base import TrainSet

LOSSES = ("warp", "bpr", "warp-kos", "logistic")
USER_FEATURE_KINDS = ("country", "segment")
# English stop words plus words that describe packaging, not the product
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | {"set", "pack", "box", "assorted", "design", "colour", "small", "large"}
_WORD = re.compile(r"[a-z]+")


def tokenize(title: str) -> list[str]:
    """Lower-cased words of two letters or more, stop words removed, in order (duplicates kept)."""
    return [w for w in _WORD.findall(title.lower()) if len(w) >= 2 and w not in STOP_WORDS]


@dataclass(frozen=True)
class FeatureSpace:
    """A feature matrix (rows: users or items, columns: named features), each row summing to one."""

    matrix: sp.csr_matrix
    names: list[str]


def _matrix(rows: Sequence[Sequence[str]], names: list[str], metadata_weight: float) -> sp.csr_matrix:
    """Each row's first feature (the identity) weighs 1 - metadata_weight, the others share metadata_weight (the
    identity takes it all when there are none): an entity's embedding is a weighted mean of its features'."""
    col = {n: j for j, n in enumerate(names)}
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[float] = []
    for r, feats in enumerate(rows):
        meta = sorted({col[f] for f in feats[1:]} - {col[feats[0]]})
        indices.append(col[feats[0]])
        data.append(1.0 - metadata_weight if meta else 1.0)
        indices += meta
        if meta:
            data += [metadata_weight / len(meta)] * len(meta)
        indptr[r + 1] = len(indices)
    shape = (len(rows), len(names))
    m = sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int32), indptr), shape=shape)
    m.sort_indices()
    return m


def vocabulary(titles: Sequence[str], min_df: int = 3, max_df: float = 0.5, max_vocab: int = 2000) -> list[str]:
    """Tokens in at least `min_df` titles and at most a `max_df` share of them, the `max_vocab` most frequent
    (ties broken alphabetically, so the vocabulary is deterministic)."""
    df = Counter(t for title in titles for t in set(tokenize(title)))
    limit = max_df * max(len(titles), 1)
    kept = sorted((t for t, n in df.items() if min_df <= n <= limit), key=lambda t: (-df[t], t))
    return kept[:max_vocab]


def price_edges(prices: np.ndarray, bands: int) -> np.ndarray:
    """Inner quantile edges of the known (positive) prices: `bands` bins, fewer when prices repeat."""
    known = prices[np.isfinite(prices) & (prices > 0)]
    if bands < 2 or len(known) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(known, np.linspace(0, 1, bands + 1)[1:-1]))


def item_features(
    train: TrainSet, *, min_df: int = 3, max_df: float = 0.5, max_vocab: int = 2000, price_bands: int = 5,
    metadata_weight: float = 0.5,
) -> FeatureSpace:
    """Identity + `tok:<word>` + `price:<band>` + `cat:<category>` per item; the metadata features share
    `metadata_weight` of each row (0: identity only)."""
    n = train.n_items
    titles = train.item_title or [""] * n
    cats = train.item_categories or [[] for _ in range(n)]
    prices = train.item_price if len(train.item_price) else np.zeros(n, np.float32)
    rows: list[list[str]] = [[f"item:{i}"] for i in range(n)]
    names = [f"item:{i}" for i in range(n)]
    if metadata_weight > 0:
        vocab = vocabulary([str(t or "") for t in titles], min_df, max_df, max_vocab)
        known = set(vocab)
        edges = price_edges(np.asarray(prices, np.float64), price_bands)
        cat_names = sorted({c for cs in cats for c in cs or []})
        names += [f"tok:{t}" for t in vocab] + [f"price:{b}" for b in range(len(edges) + 1 if len(edges) else 0)]
        names += [f"cat:{c}" for c in cat_names]
        for i in range(n):
            rows[i] += [f"tok:{t}" for t in tokenize(str(titles[i] or "")) if t in known]
            if len(edges) and np.isfinite(prices[i]) and prices[i] > 0:
                rows[i].append(f"price:{int(np.searchsorted(edges, prices[i], side='right'))}")
            rows[i] += [f"cat:{c}" for c in cats[i] or []]
    return FeatureSpace(_matrix(rows, names, metadata_weight), names)


def user_features(train: TrainSet, *, metadata_weight: float = 0.5) -> FeatureSpace:
    """Identity + `country:<c>` + `segment:<s>` per user; country and segment share `metadata_weight` of each row
    (0: identity only)."""
    n = train.n_users
    countries = train.user_country or [None] * n
    segments = train.user_segment or [None] * n
    rows: list[list[str]] = [[f"user:{u}"] for u in range(n)]
    names = [f"user:{u}" for u in range(n)]
    if metadata_weight > 0:
        names += [f"country:{c}" for c in sorted({c for c in countries if c})]
        names += [f"segment:{s}" for s in sorted({s for s in segments if s})]
        for u in range(n):
            rows[u] += [f"{kind}:{v}" for kind, v in (("country", countries[u]), ("segment", segments[u])) if v]
    return FeatureSpace(_matrix(rows, names, metadata_weight), names)


def interactions(weights: sp.csr_matrix) -> tuple[sp.coo_matrix, sp.coo_matrix]:
    """Binary interactions where the weight is positive, and sample weights log1p(weight) scaled to mean one (so the
    learning rate means the same whatever the event-type weights), on exactly the same entries, as LightFM needs."""
    w = sp.coo_matrix(weights, dtype=np.float64)
    w.sum_duplicates()  # one interaction per (user, item)
    keep = w.data > 0  # negatives (net returns) and explicit zeros are no interaction
    rows, cols, data = w.row[keep], w.col[keep], np.log1p(w.data[keep])
    data = data / data.mean() if len(data) else data
    inter = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=w.shape)
    sample = sp.coo_matrix((data.astype(np.float32), (rows, cols)), shape=w.shape)
    return inter, sample


def _check_trainset(train: TrainSet) -> None:
    n_u, n_i = train.n_users, train.n_items
    if n_u == 0 or n_i == 0:
        raise ValueError(f"TrainSet: needs users and items, got {n_u} users and {n_i} items")
    if train.weights.shape != (n_u, n_i):
        raise ValueError(f"TrainSet.weights: shape {train.weights.shape}, expected {(n_u, n_i)}")
    if not np.isfinite(train.weights.data).all():
        raise ValueError("TrainSet.weights: holds NaN or infinite values")
    if not (train.weights.data > 0).any():
        raise ValueError("TrainSet.weights: no positive interaction to learn from")
    for name, value, n in (("item_title", train.item_title, n_i), ("item_categories", train.item_categories, n_i),
                           ("item_price", train.item_price, n_i), ("user_country", train.user_country, n_u),
                           ("user_segment", train.user_segment, n_u)):
        if len(value) not in (0, n):
            raise ValueError(f"TrainSet.{name}: {len(value)} entries, expected {n} (one per index) or none")


class LightFMHybrid:
    """LightFM on identity + metadata features; a `training.models.base.Model`.

    After `fit`: `user_factors` (n_users x d), `item_factors` (n_items x d), `user_bias`, `item_bias` (float32), with
    the feature embeddings already summed in, so `score` equals `LightFM.predict` less the user bias (which never
    changes a customer's ranking).
    """

    name = "lightfm"
    # Defaults from a sweep on Online Retail (train < 2011-11-01): metadata helps new items at a small weight and
    # hurts at the row-normalized default (tokens drown the identity; country is mostly "United Kingdom").

    def __init__(
        self,
        no_components: int = 64,
        epochs: int = 30,
        loss: str = "warp",
        learning_rate: float = 0.05,
        item_alpha: float = 1e-6,
        user_alpha: float = 1e-6,
        seed: int = 7,
        num_threads: int = 1,
        *,
        max_sampled: int = 10,
        min_df: int = 3,
        max_vocab: int = 2000,
        price_bands: int = 5,
        item_metadata_weight: float = 0.2,
        user_metadata_weight: float = 0.1,
    ) -> None:
        integers = (("no_components", no_components, 1), ("epochs", epochs, 1), ("num_threads", num_threads, 1),
                    ("max_sampled", max_sampled, 1), ("min_df", min_df, 1), ("max_vocab", max_vocab, 0),
                    ("price_bands", price_bands, 0), ("seed", seed, 0))
        for field, value, low in integers:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"LightFMHybrid.{field}: expected an integer >= {low}, got {value!r}")
        if loss not in LOSSES:
            raise ValueError(f"LightFMHybrid.loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        for field, x in (("learning_rate", learning_rate), ("item_alpha", item_alpha), ("user_alpha", user_alpha)):
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not np.isfinite(x) or x < 0:
                raise ValueError(f"LightFMHybrid.{field}: expected a finite number >= 0, got {x!r}")
        for field, x in (("item_metadata_weight", item_metadata_weight),
                         ("user_metadata_weight", user_metadata_weight)):
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 <= x < 1:
                raise ValueError(f"LightFMHybrid.{field}: expected a number in [0, 1), got {x!r}")
        if learning_rate == 0:
            raise ValueError("LightFMHybrid.learning_rate: must be positive, got 0")
        self.no_components, self.epochs, self.loss = int(no_components), int(epochs), loss
        self.learning_rate = float(learning_rate)
        self.item_alpha, self.user_alpha = float(item_alpha), float(user_alpha)
        self.seed, self.num_threads, self.max_sampled = int(seed), int(num_threads), int(max_sampled)
        self.min_df, self.max_vocab, self.price_bands = int(min_df), int(max_vocab), int(price_bands)
        self.item_metadata_weight, self.user_metadata_weight = float(item_metadata_weight), float(user_metadata_weight)
        self.model: LightFM | None = None

    @property
    def params(self) -> dict[str, object]:
        """Every hyper-parameter, for MLflow."""
        return {k: getattr(self, k) for k in ("no_components", "epochs", "loss", "learning_rate", "item_alpha",
                                              "user_alpha", "seed", "num_threads", "max_sampled", "min_df",
                                              "max_vocab", "price_bands", "item_metadata_weight",
                                              "user_metadata_weight")}

    def fit(self, train: TrainSet) -> None:
        _check_trainset(train)
        self.item_space = item_features(train, min_df=self.min_df, max_vocab=self.max_vocab,
                                        price_bands=self.price_bands, metadata_weight=self.item_metadata_weight)
        self.user_space = user_features(train, metadata_weight=self.user_metadata_weight)
        inter, sample = interactions(train.weights)
        model = LightFM(no_components=self.no_components, loss=self.loss, learning_rate=self.learning_rate,
                        item_alpha=self.item_alpha, user_alpha=self.user_alpha, max_sampled=self.max_sampled,
                        random_state=np.random.RandomState(self.seed))
        # warp-kos takes no sample weights (LightFM refuses them)
        model.fit(inter, user_features=self.user_space.matrix, item_features=self.item_space.matrix,
                  sample_weight=None if self.loss == "warp-kos" else sample, epochs=self.epochs,
                  num_threads=self.num_threads)
        self.model = model
        ub, ue = model.get_user_representations(self.user_space.matrix)
        ib, ie = model.get_item_representations(self.item_space.matrix)
        self.user_factors = np.ascontiguousarray(ue, dtype=np.float32)
        self.user_bias = np.ascontiguousarray(ub, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(ie, dtype=np.float32)
        self.item_bias = np.ascontiguousarray(ib, dtype=np.float32)
        n_id = train.n_users  # identity features come first; the rest are what a cold customer can have
        self.cold_user_features: list[str] = self.user_space.names[n_id:]
        self.cold_user_embeddings = np.ascontiguousarray(model.user_embeddings[n_id:], dtype=np.float32)

    def _fitted(self) -> None:
        if self.model is None:
            raise RuntimeError("LightFMHybrid: call fit() before scoring")

    def score(self, users: np.ndarray) -> np.ndarray:
        self._fitted()
        idx = np.asarray(users)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"users: expected a 1-d array of user indices, got dtype {idx.dtype} shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.user_factors)):
            raise ValueError(f"users: indices must be in [0, {len(self.user_factors)}), got {idx.min()}..{idx.max()}")
        return self.user_factors[idx] @ self.item_factors.T + self.item_bias

    def fold_in_user(self, feature_names: Sequence[str]) -> np.ndarray:
        """The vector of a cold customer known only by features such as `country:France` or `segment:loyal`.

        It is the row a training user with these features would have if its identity embedding were zero:
        `user_metadata_weight` x the mean of the features' embeddings. Values never seen in training add nothing, so a
        customer with none gets zeros (and ranks by item bias alone, a popularity order).
        """
        self._fitted()
        if isinstance(feature_names, str):
            raise ValueError(f"feature_names: expected a list of 'kind:value' strings, not {feature_names!r}")
        index = {n: j for j, n in enumerate(self.cold_user_features)}
        rows = []
        for f in feature_names:
            kind, sep, value = str(f).partition(":")
            if not sep or kind not in USER_FEATURE_KINDS or not value:
                raise ValueError(f"feature_names: {f!r} is not 'country:<value>' or 'segment:<value>'")
            if f in index:
                rows.append(index[f])
        if not rows:
            return np.zeros(self.no_components, np.float32)
        mean = self.cold_user_embeddings[sorted(set(rows))].mean(axis=0)
        return (self.user_metadata_weight * mean).astype(np.float32)
