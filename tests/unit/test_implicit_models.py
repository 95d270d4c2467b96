"""implicit-based models on a planted checkerboard: each ranks the unseen item of the user's own group first.

Also: determinism per seed, ALS fold-in against the trained factors (and the service's numpy copy), empty rows, errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import scipy.sparse as sp

from features.scoring import als_fold_in as service_fold_in
from training.models.base import TrainSet
from training.models.implicit_models import (
    ALS,
    BPR,
    ItemKNN,
    _top_k_per_row,
    als_fold_in,
    confidence,
    confidence_values,
)

N_PER_GROUP_USERS, N_PER_GROUP_ITEMS = 30, 8


def trainset(w: np.ndarray) -> TrainSet:
    m = sp.csr_matrix(w.astype(np.float32))
    nu, ni = w.shape
    return TrainSet(user_ids=[f"u{i}" for i in range(nu)], item_ids=[f"i{j}" for j in range(ni)], weights=m,
                    purchases=m, last_ts=sp.csr_matrix(w.shape, dtype=np.float64), split_ts=0.0)


def checkerboard(extra_users: int = 0, extra_items: int = 0) -> tuple[TrainSet, np.ndarray]:
    """Users 0..29 (group A) like items 0..7, users 30..59 (group B) items 8..15; each user misses one own item.

    Returns the train set and, per planted user, the held-out item. Extra users/items have no interactions.
    """
    rng = np.random.default_rng(11)
    g, k = N_PER_GROUP_USERS, N_PER_GROUP_ITEMS
    w = np.zeros((2 * g + extra_users, 2 * k + extra_items))
    held = np.zeros(2 * g, dtype=np.int64)
    for u in range(2 * g):
        items = np.arange(k) + (0 if u < g else k)
        held[u] = items[u % k]
        w[u, items] = rng.uniform(1.0, 6.0, size=k)  # uneven weights: the structure, not the weights, decides
        w[u, held[u]] = 0.0
    return trainset(w), held


def other_group(u: int) -> np.ndarray:
    k = N_PER_GROUP_ITEMS
    return np.arange(k, 2 * k) if u < N_PER_GROUP_USERS else np.arange(k)


MODELS = {
    "knn_cosine": lambda: ItemKNN("cosine", k=10),
    "knn_bm25": lambda: ItemKNN("bm25", k=10),
    "als": lambda: ALS(factors=8, regularization=1.0, iterations=15, alpha=2.0, seed=3),
    "bpr": lambda: BPR(factors=8, learning_rate=0.05, regularization=0.01, iterations=150, seed=3),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkerboard_unseen_own_group_item_beats_every_other_group_item(name: str) -> None:
    train, held = checkerboard()
    model = MODELS[name]()
    model.fit(train)
    users = np.arange(len(held))
    s = model.score(users)
    assert s.dtype == np.float32 and s.shape == (len(users), train.n_items)
    for u in users:
        assert s[u, held[u]] > s[u, other_group(u)].max(), (name, u)


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_factor_models_expose_float32_factors_whose_product_is_the_score(name: str) -> None:
    train, _ = checkerboard()
    model = MODELS[name]()
    model.fit(train)
    assert isinstance(model.user_factors, np.ndarray) and model.user_factors.dtype == np.float32
    assert isinstance(model.item_factors, np.ndarray) and model.item_factors.dtype == np.float32
    assert model.user_factors.shape[0] == train.n_users and model.item_factors.shape[0] == train.n_items
    users = np.array([0, 45])
    np.testing.assert_allclose(model.score(users), model.user_factors[users] @ model.item_factors.T, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_scores(name: str) -> None:
    train, _ = checkerboard()
    a, b = MODELS[name](), MODELS[name]()
    a.fit(train)
    b.fit(train)
    users = np.arange(train.n_users)
    np.testing.assert_array_equal(a.score(users), b.score(users))


def test_a_different_seed_gives_different_factors() -> None:
    train, _ = checkerboard()
    for make in (lambda s: ALS(factors=8, iterations=5, seed=s), lambda s: BPR(factors=8, iterations=20, seed=s)):
        a, b = make(1), make(2)
        a.fit(train)
        b.fit(train)
        assert not np.allclose(a.user_factors, b.user_factors)


def test_item_knn_similarity_is_top_k_csr_without_the_item_itself() -> None:
    train, _ = checkerboard()
    model = ItemKNN("cosine", k=3)
    model.fit(train)
    sim = model.similarity
    assert sp.isspmatrix_csr(sim) or isinstance(sim, sp.csr_array)
    assert sim.shape == (train.n_items, train.n_items) and sim.dtype == np.float32
    assert np.diff(sim.indptr).max() <= 3 and np.diff(sim.indptr).min() == 3
    assert np.all(sim.diagonal() == 0)
    k = N_PER_GROUP_ITEMS
    rows = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
    assert np.all((rows < k) == (sim.indices < k)), "neighbours come from the item's own group"
    # the score is the user's (clipped) weights times the neighbour matrix
    users = np.array([0, 31])
    expected = train.weights[users].toarray() @ sim.toarray()
    np.testing.assert_allclose(model.score(users), expected, rtol=1e-5)


def test_top_k_per_row_keeps_the_largest_and_breaks_ties_by_column() -> None:
    m = sp.csr_matrix(np.array([[0.0, 3.0, 1.0, 3.0, 2.0], [5.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5]))
    out = _top_k_per_row(m, 2).toarray()
    np.testing.assert_array_equal(out, [[0, 3, 0, 3, 0], [5, 0, 0, 0, 0], [0] * 5])
    out1 = _top_k_per_row(m, 1).toarray()
    np.testing.assert_array_equal(out1, [[0, 3, 0, 0, 0], [5, 0, 0, 0, 0], [0] * 5])


def test_users_and_items_without_interactions_score_without_nans() -> None:
    train, held = checkerboard(extra_users=2, extra_items=2)
    empty_users = np.array([train.n_users - 2, train.n_users - 1])
    empty_items = np.array([train.n_items - 2, train.n_items - 1])
    for name, make in MODELS.items():
        model = make()
        model.fit(train)
        s = model.score(np.arange(train.n_users))
        assert np.all(np.isfinite(s)), name
        assert s[0, held[0]] > s[0, other_group(0)].max(), name
        if name == "bpr":
            # no history: item bias only, the same for every such user; unseen items rank with the least liked
            np.testing.assert_allclose(s[empty_users[0]], model.item_factors[:, -1])
            assert np.all(s[: len(held), empty_items].max(axis=1) <= s[: len(held)].max(axis=1))
        else:
            assert np.all(s[empty_users] == 0), name
            assert np.all(s[:, empty_items] == 0), name


def test_negative_weights_count_as_no_interest() -> None:
    w = np.array([[2.0, -3.0, 0.0], [0.0, 1.0, 4.0]])
    c = confidence(trainset(w), alpha=2.0)
    assert c.dtype == np.float64
    expected = [[1 + 2 * np.log1p(2.0), 1.0, 0.0], [0.0, 1 + 2 * np.log1p(1.0), 1 + 2 * np.log1p(4.0)]]
    np.testing.assert_allclose(c.toarray(), expected)
    linear = confidence(sp.csr_matrix(w), 0.5, "linear").toarray()
    np.testing.assert_allclose(linear, [[2.0, 1.0, 0.0], [0.0, 1.5, 3.0]])
    knn = ItemKNN("cosine", k=2)
    knn.fit(trainset(np.vstack([w, [[1.0, 1.0, 0.0]]])))
    assert knn.history is not None and knn.history.data.min() > 0


def test_als_fold_in_matches_a_hand_solved_case() -> None:
    y = np.array([[1.0, 0.0], [0.0, 2.0]])
    # (YtY + (c-1) y0 y0' + reg I) x = c y0  ->  diag(1 + 2 + 0.5, 4 + 0.5) x = (3, 0)
    x = als_fold_in(y, np.array([0]), np.array([3.0]), regularization=0.5)
    np.testing.assert_allclose(x, [3.0 / 3.5, 0.0], rtol=1e-6)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(als_fold_in(y, np.array([], dtype=np.int64), np.array([]), 0.5), [0.0, 0.0])


def test_als_fold_in_recovers_the_trained_user_and_agrees_with_the_service() -> None:
    train, held = checkerboard()
    model = ALS(factors=8, regularization=1.0, iterations=30, alpha=2.0, seed=5)
    model.fit(train)
    w = train.weights.toarray()
    for u in (0, 7, 33, 59):
        vec = model.fold_in(w[u])
        trained = model.user_factors[u]
        cos = float(vec @ trained / (np.linalg.norm(vec) * np.linalg.norm(trained)))
        assert cos > 0.99, (u, cos)
        assert np.linalg.norm(vec - trained) < 0.1 * np.linalg.norm(trained)
        s = vec @ model.item_factors.T
        assert s[held[u]] > s[other_group(u)].max()
        np.testing.assert_allclose(model.fold_in(train.weights[u]), vec, rtol=1e-6)  # sparse row, same answer
    # features.scoring runs the same solve in the service, from dense interest rows
    rows = np.array([0, 33])
    service = service_fold_in(model.item_factors, w[rows], model.alpha, model.regularization)
    np.testing.assert_allclose(np.vstack([model.fold_in(w[r]) for r in rows]), service, rtol=1e-4, atol=1e-6)


def test_fold_in_of_an_empty_or_negative_history_is_zero() -> None:
    train, _ = checkerboard()
    model = ALS(factors=4, iterations=3)
    model.fit(train)
    assert np.all(model.fold_in(np.zeros(train.n_items)) == 0)
    row = np.zeros(train.n_items)
    row[2] = -4.0
    assert np.all(model.fold_in(row) == 0)


def test_bad_input_names_the_field() -> None:
    train, _ = checkerboard()
    with pytest.raises(ValueError, match="kind"):
        ItemKNN("jaccard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k:"):
        ItemKNN("cosine", k=0)
    with pytest.raises(ValueError, match="factors"):
        ALS(factors=0)
    with pytest.raises(ValueError, match="alpha"):
        ALS(alpha=-1.0)
    with pytest.raises(ValueError, match="scheme"):
        ALS(scheme="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning_rate"):
        BPR(learning_rate=0.0)
    with pytest.raises(ValueError, match="iterations"):
        BPR(iterations=2.5)  # type: ignore[arg-type]
    als = ALS(factors=4, iterations=2)
    with pytest.raises(RuntimeError, match="fit"):
        als.score(np.array([0]))
    with pytest.raises(RuntimeError, match="fit"):
        als.fold_in(np.zeros(train.n_items))
    bad = trainset(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="train.weights"):
        als.fit(bad)
    bad.weights = sp.csr_matrix(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="train.weights"):
        als.fit(bad)
    nan = np.ones((3, 4))
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="train.weights"):
        ItemKNN().fit(trainset(nan))
    als.fit(train)
    with pytest.raises(ValueError, match="users"):
        als.score(np.array([train.n_users]))
    with pytest.raises(ValueError, match="users"):
        als.score(np.array([0.5]))
    with pytest.raises(ValueError, match="user_items_row"):
        als.fold_in(np.ones(train.n_items + 1))
    with pytest.raises(ValueError, match="item_idx"):
        als_fold_in(als.item_factors, np.array([train.n_items]), np.array([2.0]), 0.1)
    with pytest.raises(ValueError, match="confidences"):
        als_fold_in(als.item_factors, np.array([0, 1]), np.array([2.0]), 0.1)
    assert confidence_values(np.array([-1.0]), 3.0)[0] == 1.0
