"""The array blend is the dict blend: identical answers (items, scores, reasons) on random inputs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.bundle import load_bundle
from recsvc.recommend import CatalogEntry, LiveView, Request, ServingRecommender, blend
from recsvc.recommend_arrays import CatalogArrays, DenseSignals, blend_dense, dense, precomputed_dense, similarity, to_signals
from recsvc.rules import ChannelRules, SegmentRules, Weights
from tests.recs_fixtures import ITEMS, category, write_bundle

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> ServingRecommender:
    arrays, meta = load_bundle(write_bundle(tmp_path_factory.mktemp("b") / "b"))
    return ServingRecommender.from_bundle(arrays, meta)


def random_case(rec: ServingRecommender, seed: int) -> tuple:  # type: ignore[type-arg]
    rng = random.Random(seed)
    extras = ["NEW1", "NEW2", "NEW3"]
    universe = ITEMS + extras
    catalog = {}
    for item in rng.sample(universe, rng.randrange(len(universe))):
        cats = (category(item) if item in ITEMS else rng.choice(["c0", "c9", "Garden"]), rng.choice(["x", "y"]))
        catalog[item] = CatalogEntry(rng.random() > 0.2, cats[: rng.randrange(3)], item)

    def scores(k: int) -> dict[str, float]:
        picked = rng.sample(universe, k)
        raw = {i: rng.choice([1.0, 0.5, rng.random() + 0.01]) for i in picked}
        best = max(raw.values(), default=1.0)
        return {i: v / best for i, v in raw.items()}

    model = {i: v for i, v in scores(rng.randrange(1, 12)).items() if i in ITEMS}
    sig = DenseSignals()
    sig.model = dense(rec, model)[0] if model else None
    sig.session = similarity(rec, rng.sample(ITEMS + ["NOPE"], rng.randrange(0, 4)))
    sig.context = similarity(rec, rng.sample(ITEMS, rng.randrange(0, 2)))
    sig.cart = similarity(rec, rng.sample(ITEMS, rng.randrange(0, 3)))
    sig.trending, sig.trending_extra = dense(rec, scores(rng.randrange(0, 8)))
    sig.trending_label = "trending_in:GB"
    sig.popular, sig.popular_extra = dense(rec, scores(rng.randrange(0, 8)))
    bought = set(rng.sample(universe, rng.randrange(0, 6)))
    live = LiveView(person="p", known=True, segment="at risk", purchased=bought,
                    purchased_recent={i: NOW - rng.randrange(0, 20) * 86400.0 for i in bought if rng.random() < 0.5},
                    returned=set(rng.sample(universe, rng.randrange(0, 3))), cart=rng.sample(universe, rng.randrange(0, 3)),
                    category_affinity={c: rng.random() for c in rng.sample(["c0", "c1", "c2", "c3", "Garden", "x"], 3)})
    rules = ChannelRules(exclude_returned=rng.random() < 0.8, exclude_unavailable=rng.random() < 0.8,
                         exclude_in_cart=rng.random() < 0.8, purchased=rng.choice(["exclude", "cooldown", "allow"]),
                         purchase_cooldown_days=rng.choice([0, 7, 30]), max_per_category=rng.choice([0, 1, 2, 4]),
                         weights=Weights(model=rng.choice([0.0, 1.0]), session=rng.random(), context=rng.random(),
                                         cart=rng.random(), category=rng.choice([0.0, 0.15, 1.0]),
                                         trending=rng.random(), popular=rng.choice([0.0, 0.05])))
    seg = rng.choice([None, SegmentRules(repeat_boost=0.3), SegmentRules(weights={"trending": 0.9})])
    req = Request("web", rng.choice([1, 3, 5, 10, 30]), context_item=rng.choice([None, "I02"]),
                  exclude=frozenset(rng.sample(universe, rng.randrange(0, 3))),
                  category=rng.choice([None, None, "C1", "garden", "x"]))
    return sig, live, catalog, rules, seg, req


def test_array_blend_reasons_are_tokens(rec: ServingRecommender) -> None:
    sig = DenseSignals(model=dense(rec, {"I01": 1.0, "I02": 0.5})[0])
    catalog = {"I01": CatalogEntry(True, ("Home & Garden",)), "I02": CatalogEntry(True, ("Toys",))}
    live = LiveView(person="p", known=True, segment="at risk", purchased={"I01"},
                    category_affinity={"Home & Garden": 1.0})
    rules = ChannelRules(purchased="allow", weights=Weights(category=1.0))
    out = blend_dense(rec, CatalogArrays.build(rec, catalog), sig, live, catalog, rules, SegmentRules(repeat_boost=1.0),
                      Request("web", 1), NOW)
    assert out[0].item_id == "I01" and out[0].reasons == ["repeat", "segment:at_risk", "category:Home_Garden"]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9))
def test_array_blend_equals_dict_blend(rec: ServingRecommender, seed: int) -> None:
    sig, live, catalog, rules, seg, req = random_case(rec, seed)
    arrays = CatalogArrays.build(rec, catalog)
    fast = blend_dense(rec, arrays, sig, live, catalog, rules, seg, req, NOW)
    slow = blend(to_signals(rec, sig), live, catalog, rules, seg, req, NOW, rec.categories_by_id)
    assert [(e.item_id, e.score, e.reasons) for e in fast] == [(e.item_id, e.score, e.reasons) for e in slow]


def test_precomputed_vector_matches_the_dict(rec: ServingRecommender) -> None:
    vec, purchases = precomputed_dense(rec, "u1")  # type: ignore[misc]
    pre = rec.precomputed("u1")
    assert pre is not None and purchases == pre[1]
    assert {rec.item_ids[i]: float(vec[i]) for i in np.nonzero(vec)[0]} == pre[0]
    assert precomputed_dense(rec, "nobody") is None


def test_many_candidates_walk_past_the_first_window(rec: ServingRecommender) -> None:
    """Diversity that skips most candidates makes the walk widen its window: still the dict blend's answer."""
    sig = DenseSignals(popular=np.linspace(1.0, 0.05, rec.n_items))
    catalog = {i: CatalogEntry(True, ("same",)) for i in ITEMS[:-1]}
    live = LiveView(person="p")
    rules = ChannelRules(max_per_category=1)
    req = Request("web", 3)
    arrays = CatalogArrays.build(rec, catalog)
    fast = blend_dense(rec, arrays, sig, live, catalog, rules, None, req, NOW)
    slow = blend(to_signals(rec, sig), live, catalog, rules, None, req, NOW, rec.categories_by_id)
    # I00, then only I19 (not in this catalog: c3 as trained) escapes the cap; I01 fills the short list
    assert [e.item_id for e in fast] == [e.item_id for e in slow] == ["I00", "I01", "I19"]
