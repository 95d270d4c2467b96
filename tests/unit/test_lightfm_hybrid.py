"""LightFM hybrid on planted catalogs: description tokens carry taste to never-bought items, a cold customer gets their
country's items, numpy scoring equals LightFM.predict, fits are reproducible, and bad input names the field."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from training.models.base import TrainSet
from training.models.lightfm_hybrid import (
    LightFMHybrid,
    interactions,
    item_features,
    price_edges,
    tokenize,
    user_features,
    vocabulary,
)

SMALL = dict(no_components=8, epochs=15, learning_rate=0.05, seed=3)


def trainset(weights: np.ndarray, titles: list[str] | None = None, countries: list[str | None] | None = None,
             prices: np.ndarray | None = None, categories: list[list[str]] | None = None) -> TrainSet:
    n_u, n_i = weights.shape
    w = sp.csr_matrix(weights.astype(np.float32))
    return TrainSet(
        user_ids=[f"u{u}" for u in range(n_u)], item_ids=[f"i{i}" for i in range(n_i)], weights=w,
        purchases=(w > 0).astype(np.float32), last_ts=sp.csr_matrix((n_u, n_i), dtype=np.float64), split_ts=1e9,
        user_country=countries if countries is not None else [None] * n_u,
        item_title=titles if titles is not None else [""] * n_i,
        item_categories=categories if categories is not None else [[] for _ in range(n_i)],
        item_price=prices if prices is not None else np.zeros(n_i, np.float32),
        user_segment=[None] * n_u,
    )


GROUPS = ("heart", "star", "owl")
NOUNS = {"heart": ("mug", "candle", "cushion", "tin"), "star": ("lantern", "bag", "clock", "frame"),
         "owl": ("doorstop", "apron", "purse", "coaster")}


def token_catalog(rng: np.random.Generator) -> tuple[TrainSet, dict[str, list[int]], dict[str, list[int]]]:
    """Three groups of 8 warm items and 4 never-bought items each; a group's titles share its motif word and draw
    from its own nouns, so no title shares a word with another group's; 60 customers each buy within one group;
    customer 0 bought only two heart items."""
    titles: list[str] = []
    warm: dict[str, list[int]] = {g: [] for g in GROUPS}
    cold: dict[str, list[int]] = {g: [] for g in GROUPS}
    for g in GROUPS:
        for j in range(12):
            (warm if j < 8 else cold)[g].append(len(titles))
            titles.append(f"{g.upper()} {NOUNS[g][j % 4].upper()}")
    w = np.zeros((61, len(titles)))
    for u in range(1, 61):
        g = GROUPS[u % 3]
        w[u, rng.choice(warm[g], size=4, replace=False)] = rng.uniform(1, 10, size=4)
    w[0, warm["heart"][:2]] = 5.0
    return trainset(w, titles=titles), warm, cold


def test_tokens_carry_taste_to_items_nobody_bought() -> None:
    train, warm, cold = token_catalog(np.random.default_rng(0))
    model = LightFMHybrid(no_components=16, epochs=30, seed=1, item_metadata_weight=0.7, user_metadata_weight=0.0)
    model.fit(train)
    s = model.score(np.array([0]))[0]
    # every never-bought heart item above every never-bought star/owl item, for a customer with two purchases
    assert s[cold["heart"]].min() > max(s[cold["star"]].max(), s[cold["owl"]].max())
    # and the heart items the customer has not bought yet rank above the other motifs' items too
    unbought = [i for i in warm["heart"] if i not in warm["heart"][:2]]
    others = warm["star"] + warm["owl"] + cold["star"] + cold["owl"]
    assert np.mean(s[unbought]) > np.max(s[others])


def test_without_metadata_the_cold_items_are_noise() -> None:
    """The control for the test above: with identity features only, the motif word cannot help."""
    train, _, cold = token_catalog(np.random.default_rng(0))
    model = LightFMHybrid(no_components=16, epochs=30, seed=1, item_metadata_weight=0.0, user_metadata_weight=0.0)
    model.fit(train)
    assert model.item_factors.shape == (train.n_items, 16)
    s = model.score(np.array([0]))[0]
    assert not s[cold["heart"]].min() > max(s[cold["star"]].max(), s[cold["owl"]].max())


def country_log(rng: np.random.Generator) -> tuple[TrainSet, list[int], list[int]]:
    """France buys items 0-9, Germany items 10-19, both with the same popularity profile."""
    w = np.zeros((80, 20))
    countries: list[str | None] = []
    for u in range(80):
        fr = u % 2 == 0
        countries.append("FR" if fr else "DE")
        pool = np.arange(0, 10) if fr else np.arange(10, 20)
        w[u, rng.choice(pool, size=3, replace=False)] = 5.0
    return trainset(w, countries=countries), list(range(10)), list(range(10, 20))


def test_cold_customer_gets_items_popular_in_their_country() -> None:
    train, fr_items, de_items = country_log(np.random.default_rng(1))
    model = LightFMHybrid(no_components=8, epochs=30, seed=2, user_metadata_weight=0.5, item_metadata_weight=0.0)
    model.fit(train)
    for country, own in (("FR", fr_items), ("DE", de_items)):
        v = model.fold_in_user([f"country:{country}"])
        assert v.dtype == np.float32 and v.shape == (8,)
        top = np.argsort(-(model.item_factors @ v + model.item_bias))[:5]
        assert set(top.tolist()) <= set(own), (country, top)
    # a country never seen adds nothing: zeros, so the ranking is the item bias alone
    assert not model.fold_in_user(["country:Atlantis"]).any()


def test_fold_in_equals_lightfm_for_a_user_with_only_those_features() -> None:
    train, _, _ = country_log(np.random.default_rng(1))
    train.user_segment = ["loyal" if u % 4 == 0 else "new" for u in range(train.n_users)]
    model = LightFMHybrid(**SMALL, user_metadata_weight=0.3)
    model.fit(train)
    names = ["country:FR", "segment:loyal"]
    row = np.zeros((1, len(model.user_space.names)), np.float32)
    for n in names:  # identity embedding zero, the features sharing the metadata weight
        row[0, model.user_space.names.index(n)] = 0.3 / len(names)
    assert model.model is not None
    _, expected = model.model.get_user_representations(sp.csr_matrix(row))
    np.testing.assert_allclose(model.fold_in_user(names), expected[0], rtol=1e-5, atol=1e-6)


def test_numpy_scores_equal_lightfm_predict() -> None:
    train, _, _ = token_catalog(np.random.default_rng(4))
    train.user_country = ["FR" if u % 3 else "UK" for u in range(train.n_users)]
    train.item_price = np.linspace(0.5, 12.0, train.n_items).astype(np.float32)
    train.item_categories = [["home"] if i % 2 else ["kitchen", "gifts"] for i in range(train.n_items)]
    model = LightFMHybrid(**SMALL)
    model.fit(train)
    users = np.array([0, 5, 17, 60])
    scores = model.score(users)
    assert scores.shape == (4, train.n_items) and scores.dtype == np.float32
    assert model.model is not None
    uu = np.repeat(users, train.n_items).astype(np.int32)
    ii = np.tile(np.arange(train.n_items), len(users)).astype(np.int32)
    predicted = model.model.predict(uu, ii, user_features=model.user_space.matrix,
                                    item_features=model.item_space.matrix).reshape(len(users), -1)
    np.testing.assert_allclose(scores + model.user_bias[users, None], predicted, rtol=1e-4, atol=1e-5)
    # the per-user bias is constant along a row, so the ranking is LightFM's own
    assert all((np.argsort(-scores[r], kind="stable")[:10] == np.argsort(-predicted[r], kind="stable")[:10]).all()
               for r in range(len(users)))


def test_same_seed_same_factors_other_seed_other_factors() -> None:
    train, _, _ = token_catalog(np.random.default_rng(5))
    a, b, c = LightFMHybrid(**SMALL), LightFMHybrid(**SMALL), LightFMHybrid(**{**SMALL, "seed": 4})
    for m in (a, b, c):
        m.fit(train)
    for attr in ("user_factors", "item_factors", "user_bias", "item_bias", "cold_user_embeddings"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    assert not np.array_equal(a.item_factors, c.item_factors)


@pytest.mark.parametrize("loss", ["bpr", "warp-kos", "logistic"])
def test_other_losses_fit_and_score(loss: str) -> None:
    train, _, _ = country_log(np.random.default_rng(6))
    model = LightFMHybrid(no_components=4, epochs=2, loss=loss)
    model.fit(train)
    assert np.isfinite(model.score(np.arange(3))).all()


def test_tokenize_and_vocabulary() -> None:
    assert tokenize("SET OF 4 Red-Heart T-LIGHT holders") == ["red", "heart", "light", "holders"]
    titles = ["red heart mug", "red heart tin", "red star mug", "blue owl", "green owl", "pink owl", "white cup"]
    # red/heart/mug/owl appear in >= 2 titles; red (3 of 7) is under the 0.5 share cap, and the cap keeps the top 3
    assert vocabulary(titles, min_df=2, max_df=0.5, max_vocab=10) == ["owl", "red", "heart", "mug"]
    assert vocabulary(titles, min_df=2, max_df=0.5, max_vocab=2) == ["owl", "red"]
    assert vocabulary(titles, min_df=2, max_df=0.4, max_vocab=10) == ["heart", "mug"]


def test_item_and_user_feature_rows() -> None:
    prices = np.array([1.0, 2.0, 3.0, 4.0, 0.0], np.float32)
    train = trainset(np.eye(3, 5), titles=["red mug", "red tin", "red cup", "blue mug", ""], prices=prices,
                     categories=[["kitchen"], [], [], ["kitchen", "gifts"], []], countries=["FR", None, "DE"])
    space = item_features(train, min_df=2, max_df=1.0, price_bands=2, metadata_weight=0.4)
    m = space.matrix.toarray()
    col = {n: j for j, n in enumerate(space.names)}
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
    assert m[0, col["item:0"]] == pytest.approx(0.6)
    # item 3: blue mug, 4.0 (upper band), two categories -> mug, price:1, cat:kitchen, cat:gifts share 0.4
    for f in ("tok:mug", "price:1", "cat:kitchen", "cat:gifts"):
        assert m[3, col[f]] == pytest.approx(0.1)
    assert m[0, col["price:0"]] > 0 and "tok:blue" not in col  # blue is in one title only
    assert m[4, col["item:4"]] == 1.0  # no title, no price, no category: identity only
    users = user_features(train, metadata_weight=0.2)
    assert users.names[3:] == ["country:DE", "country:FR"]
    assert users.matrix[1].toarray().tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]
    assert item_features(train, metadata_weight=0.0).names == [f"item:{i}" for i in range(5)]
    assert price_edges(np.array([0.0, 0.0]), 5).size == 0


def test_interactions_binarize_clip_and_weight_by_log1p() -> None:
    w = sp.csr_matrix(np.array([[5.0, -2.0, 0.0], [1.0, 0.0, 20.0]], np.float32))
    inter, sample = interactions(w)
    assert sorted(zip(inter.row.tolist(), inter.col.tolist())) == [(0, 0), (1, 0), (1, 2)]
    assert (inter.row == sample.row).all() and (inter.col == sample.col).all() and (inter.data == 1).all()
    expected = np.log1p([5.0, 1.0, 20.0])
    got = {(r, c): v for r, c, v in zip(sample.row, sample.col, sample.data)}
    np.testing.assert_allclose([got[(0, 0)], got[(1, 0)], got[(1, 2)]], expected / expected.mean(), rtol=1e-6)


def test_negative_weights_are_no_interaction_in_a_fit() -> None:
    train, fr_items, _ = country_log(np.random.default_rng(7))
    w = train.weights.toarray()
    w[0, fr_items[-1]] = -5.0
    train.weights = sp.csr_matrix(w)
    LightFMHybrid(no_components=4, epochs=1).fit(train)  # LightFM would refuse misaligned sample weights


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"loss": "hinge"}, "loss"), ({"epochs": 0}, "epochs"), ({"no_components": 2.5}, "no_components"),
     ({"learning_rate": 0.0}, "learning_rate"), ({"item_alpha": -1.0}, "item_alpha"),
     ({"item_metadata_weight": 1.0}, "item_metadata_weight"), ({"num_threads": True}, "num_threads")],
)
def test_bad_hyper_parameters_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LightFMHybrid(**kwargs)  # type: ignore[arg-type]


def test_bad_training_sets_name_the_field() -> None:
    train, _, _ = country_log(np.random.default_rng(8))
    model = LightFMHybrid(no_components=4, epochs=1)
    with pytest.raises(ValueError, match="item_title"):
        model.fit(trainset(train.weights.toarray(), titles=["x"]))
    with pytest.raises(ValueError, match="weights: no positive"):
        model.fit(trainset(np.zeros((3, 4))))
    bad = trainset(train.weights.toarray())
    bad.weights = bad.weights[:, :5]
    with pytest.raises(ValueError, match="weights: shape"):
        model.fit(bad)


def test_scoring_input_is_checked() -> None:
    train, _, _ = country_log(np.random.default_rng(9))
    model = LightFMHybrid(no_components=4, epochs=1)
    with pytest.raises(RuntimeError, match="fit"):
        model.score(np.array([0]))
    model.fit(train)
    with pytest.raises(ValueError, match="users"):
        model.score(np.array([train.n_users]))
    with pytest.raises(ValueError, match="users"):
        model.score(np.array([0.5]))
    with pytest.raises(ValueError, match="feature_names"):
        model.fold_in_user(["France"])
    with pytest.raises(ValueError, match="feature_names"):
        model.fold_in_user("country:FR")
    assert model.score(np.array([], dtype=np.int64)).shape == (0, train.n_items)
