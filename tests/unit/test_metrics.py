"""Ranking metrics on hand-computed cases, and top-k ranking (the function the service ranks with)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.scoring import Csr, top_k
from training.evaluation import map_at_k, ndcg_at_k, recall_at_k


def test_recall() -> None:
    assert recall_at_k([1, 2, 3], {2, 9}, 3) == 0.5
    assert recall_at_k([1, 2, 3], set(), 3) == 0.0


def test_ndcg_hand_computed() -> None:
    # hits at ranks 1 and 3 of 2 relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([7, 1, 8], {7, 8}, 3) == pytest.approx(expected)
    assert ndcg_at_k([7, 8], {7, 8}, 10) == pytest.approx(1.0)
    assert ndcg_at_k([1, 2], {7}, 2) == 0.0


def test_map_hand_computed() -> None:
    # hits at ranks 2 and 3: (1/2 + 2/3) / min(3, 2)
    assert map_at_k([0, 5, 6], {5, 6}, 3) == pytest.approx((0.5 + 2 / 3) / 2)
    assert map_at_k([5], {5, 6, 7}, 1) == pytest.approx(1.0)


def test_top_k_orders_and_excludes() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.0, 0.0]])
    assert top_k(s, 2).tolist() == [[1, 3], [0, 1]] or top_k(s, 2)[0].tolist() == [1, 3]
    ex = np.array([[False, True, False, False], [True, True, True, False]])
    out = top_k(s, 3, ex)
    assert out[0].tolist() == [3, 2, 0]
    assert out[1].tolist()[0] == 3 and (out[1][1:] == -1).all()


def test_csr_left_multiply_equals_dense() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    m = sp.random(20, 15, density=0.2, random_state=2, format="csr")
    d = rng.random((4, 20)) * (rng.random((4, 20)) > 0.5)
    csr = Csr(m.indptr, m.indices, m.data, m.shape)
    assert np.allclose(csr.left_multiply(d), d @ m.toarray())
