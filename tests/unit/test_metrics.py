"""Ranking metrics on hand-computed cases, top-k ranking (the function the service ranks with), and the evaluation
protocol ("all" vs "new" items) on a tiny training set whose right answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from features.scoring import Csr, row_rank, top_k
from training.data import TestSet
from training.evaluation import evaluate, map_at_k, ndcg_at_k, recall_at_k
from training.models.base import TrainSet


def test_recall() -> None:
    assert recall_at_k([1, 2, 3], {2, 9}, 3) == 0.5
    assert recall_at_k([1, 2, 3], {3}, 2) == 0.0  # the hit is at rank 3, beyond k
    assert recall_at_k([1, 2, 3], set(), 3) == 0.0


def test_ndcg_hand_computed() -> None:
    # hits at ranks 1 and 3 of 2 relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([7, 1, 8], {7, 8}, 3) == pytest.approx(expected)
    assert ndcg_at_k([7, 8], {7, 8}, 10) == pytest.approx(1.0)
    assert ndcg_at_k([1, 2], {7}, 2) == 0.0
    # 3 relevant but k = 2: the ideal is two hits, so hits at ranks 1 and 2 are perfect
    assert ndcg_at_k([4, 5, 0], {4, 5, 6}, 2) == pytest.approx(1.0)
    # a single hit at rank 2 of 1 relevant: 1/log2(3)
    assert ndcg_at_k([0, 4], {4}, 10) == pytest.approx(1 / math.log2(3))


def test_map_hand_computed() -> None:
    # hits at ranks 2 and 3: (1/2 + 2/3) / min(3, 2)
    assert map_at_k([0, 5, 6], {5, 6}, 3) == pytest.approx((0.5 + 2 / 3) / 2)
    # normalized by min(k, |relevant|) = 1
    assert map_at_k([5], {5, 6, 7}, 1) == pytest.approx(1.0)
    # hit at rank 3 only, 4 relevant, k = 3: (1/3) / 3
    assert map_at_k([0, 1, 9], {9, 10, 11, 12}, 3) == pytest.approx(1 / 9)


@pytest.mark.parametrize("fn", [recall_at_k, ndcg_at_k, map_at_k])
def test_metrics_refuse_k_below_one(fn: object) -> None:
    with pytest.raises(ValueError, match="k"):
        fn([1], {1}, 0)  # type: ignore[operator]


def test_top_k_orders_and_excludes() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.0, 0.0]])
    assert top_k(s, 2)[0].tolist() == [1, 3]
    ex = np.array([[False, True, False, False], [True, True, True, False]])
    out = top_k(s, 3, ex)
    assert out[0].tolist() == [3, 2, 0]
    assert out[1].tolist()[0] == 3 and (out[1][1:] == -1).all()
    # all tied: every item ties, the top k come back ordered by index
    assert top_k(np.zeros((1, 4)), 4)[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="exclude"):
        top_k(s, 2, np.zeros((1, 4), dtype=bool))


def test_row_rank() -> None:
    assert row_rank(np.array([[0.2, 0.9, 0.5]])).tolist() == [[2, 0, 1]]


def test_csr_left_multiply_equals_dense() -> None:
    rng = np.random.default_rng(1)
    m = sp.random(20, 15, density=0.2, random_state=2, format="csr")
    d = rng.random((4, 20)) * (rng.random((4, 20)) > 0.5)
    csr = Csr(m.indptr, m.indices, m.data, m.shape)
    assert np.allclose(csr.left_multiply(d), d @ m.toarray())
    assert np.allclose(csr.left_multiply(np.zeros((2, 20))), 0.0)


def tiny_train() -> TrainSet:
    """Two users, five items. u0 bought items 0 and 1 before the split; u1 bought item 2."""
    purchases = sp.csr_matrix(np.array([[2, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=np.float32))
    last = sp.csr_matrix(np.array([[100.0, 90.0, 0, 0, 0], [0, 0, 80.0, 0, 0]]))
    return TrainSet(user_ids=["u0", "u1"], item_ids=list("abcde"), weights=purchases.copy(), purchases=purchases,
                    last_ts=last, split_ts=200.0, user_country=[None, None])


class Fixed:
    """A model with fixed scores: item 0 > 1 > 3 > 4 > 2 for every user."""

    name = "fixed"

    def fit(self, train: TrainSet) -> None:
        pass

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.tile(np.array([5.0, 4.0, 1.0, 3.0, 2.0]), (len(users), 1))


def test_evaluate_protocols_hand_computed() -> None:
    train = tiny_train()
    # test window: u0 buys 1 (already bought) and 3 (new); u1 buys 4 (new)
    test = TestSet(users=np.array([0, 1]), relevant=[{1, 3}, {4}])
    a = evaluate(Fixed(), train, test, k=2, protocol="all")
    # u0 top-2 [0, 1]: hit at rank 2 of 2 relevant -> recall 1/2, ndcg (1/log2 3) / (1 + 1/log2 3)
    # u1 top-2 [0, 1]: no hit
    assert a.users == 2
    assert a.recall == pytest.approx(0.25)
    assert a.ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2)
    assert a.coverage == pytest.approx(2 / 5)
    b = evaluate(Fixed(), train, test, k=2, protocol="new")
    # u0: bought 0, 1 excluded -> [3, 4]; relevant new {3}: hit at rank 1 -> 1.0
    # u1: bought 2 excluded -> [0, 1]; relevant {4}: miss
    assert b.users == 2
    assert b.ndcg == pytest.approx(0.5) and b.recall == pytest.approx(0.5) and b.map == pytest.approx(0.5)
    assert b.coverage == pytest.approx(4 / 5)


def test_evaluate_skips_users_without_new_items_and_checks_arguments() -> None:
    train = tiny_train()
    test = TestSet(users=np.array([0]), relevant=[{0, 1}])  # only repeats
    assert evaluate(Fixed(), train, test, protocol="new").users == 0
    with pytest.raises(ValueError, match="protocol"):
        evaluate(Fixed(), train, test, protocol="both")
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda users: np.zeros((len(users), 3)), train, test)
