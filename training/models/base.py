"""The contract every recommender model in training follows, and the training set they all read.

Models score all items for a batch of users; the pipeline turns scores into top-k lists the same way for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp


@dataclass
class TrainSet:
    """Interactions before the split date, indexed 0..n-1 with explicit id maps (never raw ids in matrices).

    `weights` is users x items (float32 CSR): event-type weights with time decay, summed per (user, item).
    `purchases` is users x items (float32 CSR): purchase counts only (for repeat-purchase signals).
    `last_ts` is users x items (float64 CSR): the last interaction time (epoch seconds), 0 where none.
    """

    user_ids: list[str]
    item_ids: list[str]
    weights: sp.csr_matrix
    purchases: sp.csr_matrix
    last_ts: sp.csr_matrix
    split_ts: float  # the split instant: train events are strictly before it
    user_country: list[str | None] = field(default_factory=list)  # per user index
    item_title: list[str] = field(default_factory=list)  # per item index
    item_categories: list[list[str]] = field(default_factory=list)
    item_price: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    user_segment: list[str | None] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


class Model(Protocol):
    name: str

    def fit(self, train: TrainSet) -> None:
        """Learn from the training set; must be deterministic for a fixed seed."""
        ...

    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense scores, shape (len(users), n_items), float32; higher is better. Users are row indices of the TrainSet."""
        ...
