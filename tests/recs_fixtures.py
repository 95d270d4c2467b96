"""A small recommender bundle with a planted structure, so serving tests know the right answer.

20 items I00..I19 in four categories (c0: I00-I04, c1: I05-I09, ...). Items are similar only within their category,
closer ids more similar. Customer u1's precomputed candidates are I03, I08, I12, I17, I01 (best first; u1 bought I01
and I08 when the bundle was made); u2's are I10, I11, I15.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from features.bundle import load_bundle, save_bundle
from features.propensity_model import TreeEnsemble
from features.scoring import FEATURES, ITEM_STATS, Csr, RerankModel
from recsvc.models import RECOMMENDER, LoadedModel, ModelRegistry
from recsvc.recommend import ServingRecommender

N_ITEMS = 20
ITEMS = [f"I{i:02d}" for i in range(N_ITEMS)]
USERS = ["u1", "u2"]
TOP = {"u1": ["I03", "I08", "I12", "I17", "I01"], "u2": ["I10", "I11", "I15"]}
PURCHASES_AT_TRAINING = {"u1": 2.0, "u2": 0.0}


def category(item: str) -> str:
    return f"c{int(item[1:]) // 5}"


def leaf() -> TreeEnsemble:
    z = np.zeros(1)
    return TreeEnsemble(np.array([-1]), z, np.array([False]), np.array([0]), np.array([0]), z, np.array([0]), 0.0)


def similarity() -> Csr:
    rows, cols, vals = [], [], []
    for i in range(N_ITEMS):
        for j in range(N_ITEMS):
            if i != j and i // 5 == j // 5:
                rows.append(i)
                cols.append(j)
                vals.append(1.0 / abs(i - j))
    order = np.lexsort((cols, rows))
    r, c, v = np.array(rows)[order], np.array(cols)[order], np.array(vals)[order]
    indptr = np.searchsorted(r, np.arange(N_ITEMS + 1))
    return Csr(indptr.astype(np.int64), c.astype(np.int32), v, (N_ITEMS, N_ITEMS))


def bundle_contents(version_shift: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of a recommender bundle; `version_shift` rotates u1's list (to tell two versions apart)."""
    rng = np.random.default_rng(3)
    model = RerankModel(similarity(), rng.normal(size=(N_ITEMS, 4)), np.zeros((N_ITEMS, len(ITEM_STATS))),
                        np.full((1, N_ITEMS), 0.1), leaf(), leaf())
    n = max(len(v) for v in TOP.values())
    top = np.full((len(USERS), n), -1, dtype=np.int32)
    scores = np.full((len(USERS), n), np.nan, dtype=np.float32)
    for u, user in enumerate(USERS):
        items = TOP[user][version_shift:] + TOP[user][:version_shift]
        for r, item in enumerate(items):
            top[u, r] = ITEMS.index(item)
            scores[u, r] = 2.0 - 0.5 * r  # log-odds, best first
    arrays = {
        **model.arrays(),
        "user_factors": rng.normal(size=(len(USERS), 4)),
        "popularity": np.arange(N_ITEMS, dtype=np.float64)[::-1].copy(),  # I00 most popular
        "user_purchases": np.array([PURCHASES_AT_TRAINING[u] for u in USERS], dtype=np.float32),
        "user_top_items": top,
        "user_top_scores": scores,
    }
    meta = {
        "family": RECOMMENDER, "model": "rerank", "item_ids": ITEMS, "user_ids": USERS, "countries": ["GB"],
        "scorer": model.params(), "item_categories": [[category(i)] for i in ITEMS], "trained_until": 0.0,
    }
    assert meta["scorer"]["features"] == list(FEATURES)
    return arrays, meta


def write_bundle(directory: Path, version_shift: int = 0) -> Path:
    arrays, meta = bundle_contents(version_shift)
    return save_bundle(directory, arrays, meta)


def registry_with_bundle(tmp: Path, version: str = "1") -> ModelRegistry:
    """A registry without a model source, holding the planted recommender as `version`."""
    registry = ModelRegistry(None, {RECOMMENDER: ServingRecommender.from_bundle})
    arrays, meta = load_bundle(write_bundle(tmp / f"bundle-{version}"))
    registry.install(RECOMMENDER, version, arrays, meta)
    return registry


def loaded(tmp: Path, version: str = "1") -> LoadedModel[ServingRecommender]:
    got = registry_with_bundle(tmp, version).get(RECOMMENDER)
    assert got is not None
    return got
