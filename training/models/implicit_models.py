"""Collaborative filtering on `implicit` (CPU): item-kNN (cosine, BM25), ALS and BPR, fitted from `TrainSet.weights`.

Fitting uses implicit; scoring is plain numpy over the learned factors or neighbour matrix, so the service can run the
same math from a bundle. `als_fold_in` scores customers unseen at training time from their live history.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows) with a threaded BLAS

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from implicit.utils import ParameterWarning

from training.models.base import TrainSet

Scheme = Literal["log", "linear"]
SCHEMES = ("log", "linear")


def _check_number(field: str, value: object, *, minimum: float, strict: bool = False, integer: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok_type = isinstance(value, kinds)
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{field}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    v = float(value)  # type: ignore[arg-type]
    if not np.isfinite(v) or v < minimum or (strict and v == minimum):
        raise ValueError(f"{field}: expected a finite value {'>' if strict else '>='} {minimum}, got {value!r}")


def _check_scheme(field: str, scheme: object) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"{field}: expected one of {', '.join(SCHEMES)}, got {scheme!r}")


def confidence_values(weights: np.ndarray, alpha: float, scheme: Scheme = "log") -> np.ndarray:
    """Confidence of observed (user, item) weights: 1 + alpha*log1p(w) ("log") or 1 + alpha*w ("linear").

    Negative weights count as 0 (confidence 1: seen, no evidence of interest).
    """
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    return 1.0 + alpha * (np.log1p(w) if scheme == "log" else w)


def confidence(train: TrainSet | sp.spmatrix, alpha: float, scheme: Scheme = "log") -> sp.csr_matrix:
    """users x items float64 CSR of confidences over the stored entries of the weights; zeros stay absent."""
    _check_number("alpha", alpha, minimum=0.0)
    _check_scheme("scheme", scheme)
    w = train.weights if isinstance(train, TrainSet) else train
    c = sp.csr_matrix(w, dtype=np.float64, copy=True)
    c.eliminate_zeros()
    c.data = confidence_values(c.data, alpha, scheme)
    return c


def als_fold_in(
    item_factors: np.ndarray,
    item_idx: np.ndarray,
    confidences: np.ndarray,
    regularization: float,
    yty: np.ndarray | None = None,
) -> np.ndarray:
    """One user's ALS vector against fixed item factors: solves (YᵀY + Yᵢᵀ(Cᵢ - 1)Yᵢ + λI) x = Yᵢᵀ Cᵢ 1.

    The closed form of Hu, Koren & Volinsky's user step, which implicit's ALS approximates with conjugate gradient.
    `item_idx` are the items the user interacted with and `confidences` their confidences (>= 1); `yty` may be
    passed precomputed (Yᵀ Y) to fold in many users. numpy only, so the service can run it. No items: a zero vector.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"item_factors: expected a 2-d array (items x factors), got shape {y.shape}")
    idx = np.asarray(item_idx).ravel()
    c = np.asarray(confidences, dtype=np.float64).ravel()
    if idx.shape != c.shape:
        raise ValueError(f"confidences: {c.shape[0]} values for {idx.shape[0]} items in item_idx")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= y.shape[0]):
        raise ValueError(f"item_idx: expected integer indices in [0, {y.shape[0]}), got {idx[:5]!r}...")
    if not np.all(np.isfinite(c)):
        raise ValueError("confidences: must be finite")
    _check_number("regularization", regularization, minimum=0.0)
    f = y.shape[1]
    if idx.size == 0:
        return np.zeros(f, dtype=np.float32)
    gram = (y.T @ y) if yty is None else np.asarray(yty, dtype=np.float64)
    yi = y[idx]
    a = gram + (yi.T * (c - 1.0)) @ yi + regularization * np.eye(f)
    b = yi.T @ c
    try:
        x = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # singular only when regularization is 0 and the factors are degenerate
        x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x.astype(np.float32)


def _check_train(train: TrainSet) -> sp.csr_matrix:
    w = train.weights
    if not sp.issparse(w):
        raise ValueError(f"train.weights: expected a scipy sparse matrix, got {type(w).__name__}")
    if w.shape != (train.n_users, train.n_items):
        raise ValueError(f"train.weights: shape {w.shape} differs from (n_users, n_items) = "
                         f"{(train.n_users, train.n_items)}")
    w = sp.csr_matrix(w)
    if w.size and not np.all(np.isfinite(w.data)):
        raise ValueError("train.weights: contains NaN or infinite values")
    if w.nnz == 0 or (w.data > 0).sum() == 0:
        raise ValueError("train.weights: no positive interactions to learn from")
    return w


def _check_users(users: np.ndarray, n_users: int) -> np.ndarray:
    u = np.asarray(users)
    if u.ndim != 1 or (u.size and not np.issubdtype(u.dtype, np.integer)):
        raise ValueError(f"users: expected a 1-d array of integer row indices, got dtype {u.dtype} shape {u.shape}")
    if u.size and (u.min() < 0 or u.max() >= n_users):
        raise ValueError(f"users: indices must lie in [0, {n_users}), got min {u.min()} max {u.max()}")
    return u


def _not_fitted(model: object) -> RuntimeError:
    return RuntimeError(f"{type(model).__name__}: call fit(train) before score()")


def _active(w: sp.csr_matrix, axis: int) -> np.ndarray:
    """Rows (axis=1) or columns (axis=0) with at least one positive weight."""
    return np.asarray((w > 0).sum(axis=axis)).ravel() > 0


class ItemKNN:
    """Item-item neighbours (implicit cosine or BM25) on confidences; a user's score is history @ similarity.

    `similarity` (float32 CSR, items x items) keeps the k most similar other items per row: the diagonal is dropped,
    because re-buying an item is the repeat-purchase model's signal, not co-occurrence.
    """

    def __init__(self, kind: Literal["cosine", "bm25"] = "cosine", k: int = 50, alpha: float = 1.0,
                 scheme: Scheme = "log", bm25_k1: float = 1.2, bm25_b: float = 0.75) -> None:
        if kind not in ("cosine", "bm25"):
            raise ValueError(f"kind: expected 'cosine' or 'bm25', got {kind!r}")
        _check_number("k", k, minimum=1, integer=True)
        _check_number("alpha", alpha, minimum=0.0)
        _check_scheme("scheme", scheme)
        _check_number("bm25_k1", bm25_k1, minimum=0.0)
        _check_number("bm25_b", bm25_b, minimum=0.0)
        if bm25_b > 1:
            raise ValueError(f"bm25_b: expected a value in [0, 1], got {bm25_b!r}")
        self.kind, self.k, self.alpha, self.scheme = kind, int(k), float(alpha), scheme
        self.bm25_k1, self.bm25_b = float(bm25_k1), float(bm25_b)
        self.name = f"itemknn_{kind}"
        self.similarity: sp.csr_matrix | None = None
        self.history: sp.csr_matrix | None = None

    def fit(self, train: TrainSet) -> None:
        w = _check_train(train)
        ui = confidence(w, self.alpha, self.scheme)  # float64: implicit's item-item code expects it
        # K + 1: implicit counts the item itself among its neighbours
        if self.kind == "cosine":
            model = CosineRecommender(K=self.k + 1, num_threads=1)
        else:
            model = BM25Recommender(K=self.k + 1, K1=self.bm25_k1, B=self.bm25_b, num_threads=1)
        with warnings.catch_warnings():  # implicit reweights via COO internally, then warns about its own conversion
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(ui, show_progress=False)
        sim = sp.csr_matrix(model.similarity, dtype=np.float32)
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.similarity = _top_k_per_row(sim, self.k)
        hist = sp.csr_matrix(w, dtype=np.float32, copy=True)
        hist.data = np.maximum(hist.data, 0.0)
        hist.eliminate_zeros()
        self.history = hist

    def score(self, users: np.ndarray) -> np.ndarray:
        if self.similarity is None or self.history is None:
            raise _not_fitted(self)
        u = _check_users(users, self.history.shape[0])
        return np.asarray((self.history[u] @ self.similarity).toarray(), dtype=np.float32)


def _top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row (ties by column index), sorted indices."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    counts = np.diff(m.indptr)
    if counts.size == 0 or counts.max() <= k:
        return m
    rows = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((m.indices, -m.data, rows))  # per row: largest first, then lowest column
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - np.repeat(m.indptr[:-1], counts)
    keep = rank < k
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape, dtype=m.dtype)
    out.sort_indices()
    return out


class ALS:
    """Implicit-feedback ALS (Hu, Koren & Volinsky) on confidences 1 + alpha*log1p(w) (or linear).

    After fit, `user_factors` (n_users x factors) and `item_factors` (n_items x factors) are float32 numpy arrays;
    users or items with no positive interaction get zero vectors (score 0, never NaN).
    """

    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15, alpha: float = 2.0,
                 seed: int = 7, scheme: Scheme = "log") -> None:
        _check_number("factors", factors, minimum=1, integer=True)
        _check_number("regularization", regularization, minimum=0.0)
        _check_number("iterations", iterations, minimum=1, integer=True)
        _check_number("alpha", alpha, minimum=0.0)
        _check_number("seed", seed, minimum=0, integer=True)
        _check_scheme("scheme", scheme)
        self.factors, self.regularization, self.iterations = int(factors), float(regularization), int(iterations)
        self.alpha, self.seed, self.scheme = float(alpha), int(seed), scheme
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self._yty: np.ndarray | None = None

    def fit(self, train: TrainSet) -> None:
        w = _check_train(train)
        model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                        iterations=self.iterations, random_state=self.seed, num_threads=1,
                                        calculate_training_loss=False)
        model.fit(confidence(w, self.alpha, self.scheme), show_progress=False)
        uf = np.array(model.user_factors, dtype=np.float32)
        itf = np.array(model.item_factors, dtype=np.float32)
        # rows implicit never solved keep a random initialisation: zero them so they score 0
        uf[~_active(w, 1)] = 0.0
        itf[~_active(w, 0)] = 0.0
        self.user_factors, self.item_factors = uf, itf
        self._yty = itf.astype(np.float64).T @ itf.astype(np.float64)

    def score(self, users: np.ndarray) -> np.ndarray:
        if self.user_factors is None or self.item_factors is None:
            raise _not_fitted(self)
        u = _check_users(users, self.user_factors.shape[0])
        return self.user_factors[u] @ self.item_factors.T

    def fold_in(self, user_items_row: np.ndarray | sp.spmatrix) -> np.ndarray:
        """A user vector (float32, factors) from a weights row over the training items (dense or 1 x n sparse).

        Same confidence transform as fit; score with `vector @ item_factors.T`.
        """
        if self.item_factors is None or self._yty is None:
            raise RuntimeError("ALS: call fit(train) before fold_in()")
        n = self.item_factors.shape[0]
        if sp.issparse(user_items_row):
            row = sp.csr_matrix(user_items_row)
            if row.shape != (1, n):
                raise ValueError(f"user_items_row: expected shape (1, {n}), got {row.shape}")
            idx, w = row.indices, row.data
        else:
            dense = np.asarray(user_items_row, dtype=np.float64)
            if dense.shape not in ((n,), (1, n)):
                raise ValueError(f"user_items_row: expected {n} item weights, got shape {dense.shape}")
            dense = dense.ravel()
            idx = np.nonzero(dense)[0]
            w = dense[idx]
        if not np.all(np.isfinite(w)):
            raise ValueError("user_items_row: contains NaN or infinite values")
        pos = w > 0  # fit drops zero and negative totals the same way (build_trainset clips them to zero)
        return als_fold_in(self.item_factors, idx[pos], confidence_values(w[pos], self.alpha, self.scheme),
                           self.regularization, yty=self._yty)


class BPR:
    """Bayesian Personalized Ranking (implicit) on binary interactions (weight > 0).

    implicit reserves one factor for the item bias: `user_factors` has a constant 1 in its last column and
    `item_factors` the bias there, so `user_factors @ item_factors.T` already includes it. Users with no positive
    interaction score by item bias alone; items never seen get zero factors and the lowest learned bias.
    """

    name = "bpr"

    def __init__(self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01,
                 iterations: int = 60, seed: int = 7) -> None:
        _check_number("factors", factors, minimum=1, integer=True)
        _check_number("learning_rate", learning_rate, minimum=0.0, strict=True)
        _check_number("regularization", regularization, minimum=0.0)
        _check_number("iterations", iterations, minimum=1, integer=True)
        _check_number("seed", seed, minimum=0, integer=True)
        self.factors, self.learning_rate = int(factors), float(learning_rate)
        self.regularization = float(regularization)
        self.iterations, self.seed = int(iterations), int(seed)
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, train: TrainSet) -> None:
        w = _check_train(train)
        binary = sp.csr_matrix((w > 0).astype(np.float32))
        model = BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                            regularization=self.regularization, iterations=self.iterations,
                                            random_state=self.seed, num_threads=1)
        model.fit(binary, show_progress=False)
        uf = np.array(model.user_factors, dtype=np.float32)
        itf = np.array(model.item_factors, dtype=np.float32)
        users_on, items_on = _active(w, 1), _active(w, 0)
        uf[~users_on, :-1] = 0.0
        itf[~items_on, :-1] = 0.0
        itf[~items_on, -1] = itf[items_on, -1].min()
        self.user_factors, self.item_factors = uf, itf

    def score(self, users: np.ndarray) -> np.ndarray:
        if self.user_factors is None or self.item_factors is None:
            raise _not_fitted(self)
        u = _check_users(users, self.user_factors.shape[0])
        return self.user_factors[u] @ self.item_factors.T
