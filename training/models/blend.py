"""The final recommender: a two-stage re-ranker (candidates from history, BM25 item-kNN, ALS and popularity; order by
gradient-boosted trees over repeat, recency, collaborative and popularity signals), scored by
features.scoring.RerankModel with numpy alone. The trees learn on a validation window carved from the end of the
training period (features as of its start, labels = purchases inside it), never on the test period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from features.propensity_model import TreeEnsemble
from features.scoring import ITEM_STATS, Csr, History, RerankModel, recommend
from training.models.base import TrainSet
from training.models.implicit_models import ALS, ItemKNN
from training.parallel import INLINE, Lanes
from training.propensity import CompiledTrees, export_trees

DAY = 86400.0


@dataclass
class RerankParams:
    knn_k: int = 100
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.05
    als_alpha: float = 2.0
    n_cf: int = 100
    n_pop: int = 50
    trees: int = 120
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 50
    seed: int = 7


def buyers_since(train: TrainSet, days: float) -> np.ndarray:
    """Distinct customers whose last purchase of each item falls in the `days` before the split."""
    m = train.last_ts.copy()
    m.data = (m.data >= train.split_ts - days * DAY).astype(np.float64)
    return np.asarray(m.sum(axis=0)).ravel()


def item_stats(train: TrainSet) -> np.ndarray:
    """Per-item columns in features.scoring.ITEM_STATS order."""
    bought = train.purchases.copy()
    n_all = np.asarray((bought > 0).sum(axis=0)).ravel().astype(np.float64)
    bought.data = (bought.data >= 2).astype(np.float64)
    n_repeat = np.asarray(bought.sum(axis=0)).ravel()
    cols = [np.log1p(buyers_since(train, d)) for d in (14, 30, 90)]
    cols += [np.log1p(n_all), (n_repeat + 0.1) / (n_all + 1.0)]
    out = np.column_stack(cols)
    assert out.shape[1] == len(ITEM_STATS)
    return out


def countries(train: TrainSet) -> list[str]:
    return sorted({c for c in train.user_country if c})


def country_share(train: TrainSet, names: list[str]) -> np.ndarray:
    """(n_countries, n_items): the share of each country's customers who bought each item."""
    cidx = {c: i for i, c in enumerate(names)}
    uc = np.array([cidx.get(c, -1) if c else -1 for c in train.user_country], dtype=np.int64)
    known = np.nonzero(uc >= 0)[0]
    onehot = sp.csr_matrix((np.ones(len(known)), (uc[known], known)), shape=(len(names), train.n_users))
    bought = (train.purchases > 0).astype(np.float64)
    counts = np.asarray((onehot @ bought).todense())
    return counts / np.maximum(np.asarray(onehot.sum(axis=1)), 1.0)


def history(train: TrainSet, users: np.ndarray, country_index: dict[str, int]) -> History:
    return History(
        interest=train.weights[users].toarray().astype(np.float64),
        purchases=train.purchases[users].toarray().astype(np.float64),
        last_purchase=train.last_ts[users].toarray(),
        country=np.array([country_index.get(train.user_country[u] or "", -1) for u in users], dtype=np.int64),
    )


class Components:
    """Everything but the trees, fitted on one training period."""

    def __init__(self, train: TrainSet, p: RerankParams) -> None:
        knn = ItemKNN("bm25", k=p.knn_k)
        knn.fit(train)
        als = ALS(factors=p.als_factors, iterations=p.als_iterations, regularization=p.als_regularization,
                  alpha=p.als_alpha, seed=p.seed)
        als.fit(train)
        s = knn.similarity
        self.similarity = Csr(s.indptr.copy(), s.indices.copy(), s.data.astype(np.float64), s.shape)
        self.item_factors = als.item_factors
        self.user_factors = als.user_factors  # for the bundle (known customers); scoring folds users in instead
        self.popularity = buyers_since(train, 30.0)
        self.item_stats = item_stats(train)
        self.countries = countries(train)
        self.country_index = {c: i for i, c in enumerate(self.countries)}
        self.country_share = country_share(train, self.countries)

    def model(self, p: RerankParams, ranker_all: TreeEnsemble, ranker_new: TreeEnsemble) -> RerankModel:
        return RerankModel(self.similarity, self.item_factors, self.item_stats, self.country_share, ranker_all,
                           ranker_new, p.als_alpha, p.als_regularization, p.n_cf, p.n_pop)


def _placeholder_trees() -> TreeEnsemble:
    """A single leaf: used only to generate candidates before the real trees exist."""
    one = np.zeros(1)
    return TreeEnsemble(np.array([-1]), one, np.array([False]), np.array([0]), np.array([0]), one,
                        np.array([0]), 0.0)


def training_rows(comp: Components, p: RerankParams, train: TrainSet, users: np.ndarray,
                  relevant: list[set[int]], new_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Features of every candidate of the validation customers, and whether they bought it in the window."""
    model = comp.model(p, _placeholder_trees(), _placeholder_trees())
    xs, ys = [], []
    for start in range(0, len(users), 512):
        us = users[start : start + 512]
        cand = model.candidates(history(train, us, comp.country_index), train.split_ts, new_only)
        rel = relevant[start : start + 512]
        xs.append(cand.x)
        ys.append(bought_in_window(cand.rows, cand.items, rel, train.n_items))
    return np.vstack(xs), np.concatenate(ys)


def bought_in_window(rows: np.ndarray, items: np.ndarray, relevant: Sequence[set[int]], n_items: int) -> np.ndarray:
    """`items[j] in relevant[rows[j]]` for every candidate j, as one array lookup instead of a Python test each."""
    sizes = [len(r) for r in relevant]
    keys = np.repeat(np.arange(len(relevant), dtype=np.int64), sizes) * n_items
    keys += np.fromiter((i for r in relevant for i in r), dtype=np.int64, count=sum(sizes))
    return np.isin(rows.astype(np.int64) * n_items + items, keys)


@dataclass
class Window:
    """One validation window: the training set as of its start, and each customer's purchases inside it."""

    train: TrainSet
    users: np.ndarray
    relevant: list[set[int]]


PROTOCOLS = (("all", False), ("new", True))


@dataclass
class WindowRows:
    """A validation window's examples for the trees, per protocol: candidate features, labels, purchases to find."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    positives: dict[str, int]


def window_rows(w: Window, p: RerankParams) -> WindowRows:
    """Components fitted as of the window's start, then every candidate of its customers, labelled by their purchases
    inside it (protocol "new": purchases of items never bought before). A task: windows are independent."""
    comp = Components(w.train, p)
    out = WindowRows({}, {}, {})
    for proto, new_only in PROTOCOLS:
        rel = w.relevant
        if new_only:
            rel = [r - set(w.train.purchases[u].indices.tolist()) for u, r in zip(w.users, w.relevant)]
        out.x[proto], out.y[proto] = training_rows(comp, p, w.train, w.users, rel, new_only)
        out.positives[proto] = sum(map(len, rel))
    return out


def fit_classifier(x: np.ndarray, y: np.ndarray, p: RerankParams) -> HistGradientBoostingClassifier:
    """The trees of one protocol (a task: the two protocols' trees are independent)."""
    clf = HistGradientBoostingClassifier(max_iter=p.trees, learning_rate=p.learning_rate,
                                         max_leaf_nodes=p.max_leaf_nodes, min_samples_leaf=p.min_samples_leaf,
                                         early_stopping=False, random_state=p.seed)
    # one OpenMP thread: on a small shared machine, spinning worker threads make the fit many times slower
    with threadpool_limits(1, user_api="openmp"):
        clf.fit(x, y)
    return clf


class Reranker:
    """The champion candidate. `fit_ranker` on validation windows first, then `fit` on the full training period.

    Training ranks with `CompiledTrees` (evaluation, serving candidates); the bundle holds the same trees as arrays
    (`model`), which the service walks with numpy alone.
    """

    name = "rerank"

    def __init__(self, params: RerankParams | None = None) -> None:
        self.params = params or RerankParams()
        self.trees: dict[str, CompiledTrees] = {}
        self.validation: dict[str, float] = {}

    def fit_ranker(self, windows: Sequence[Window | WindowRows], lanes: Lanes = INLINE) -> None:
        """Learn the trees on validation windows: features as of each window's start, labels = purchases inside it.

        Several consecutive windows give the trees more (and more varied) examples than one. Windows may come as
        their rows already computed (`window_rows`, in any lane). The "new" trees are fitted by `lanes` (another
        process when there is one) while the "all" trees are fitted here.
        """
        rows = [w if isinstance(w, WindowRows) else window_rows(w, self.params)
                for w in windows if isinstance(w, WindowRows) or len(w.users)]
        if not rows:
            raise ValueError("validation windows: no customers with purchases both before and inside a window")
        p = self.params
        data = {}
        for proto, _ in PROTOCOLS:
            x, y = np.vstack([r.x[proto] for r in rows]), np.concatenate([r.y[proto] for r in rows])
            if not y.any() or y.all():
                raise ValueError(f"validation windows ({proto}): every candidate has the same label; more data needed")
            positives = sum(r.positives[proto] for r in rows)
            self.validation[f"{proto}.rows"] = float(len(y))
            self.validation[f"{proto}.positives"] = float(positives)
            self.validation[f"{proto}.candidate_recall"] = float(y.sum() / max(positives, 1))
            data[proto] = (x, y)
        self.trees = {"new": CompiledTrees(lanes.submit(fit_classifier, *data.pop("new"), p))}
        self.trees["all"] = CompiledTrees(fit_classifier(*data.pop("all"), p))

    @property
    def rankers(self) -> dict[str, TreeEnsemble]:
        """The trees as arrays, for the bundle."""
        return {proto: export_trees(t.classifier) for proto, t in self.trees.items()}

    def fit(self, train: TrainSet) -> None:
        if not self.trees:
            raise RuntimeError("Reranker.fit: call fit_ranker on a validation window first")
        self.train = train
        self.components = Components(train, self.params)
        self.scorer = self.components.model(self.params, self.trees["all"], self.trees["new"])  # type: ignore[arg-type]

    def refit(self, train: TrainSet) -> "Reranker":
        """The same trees over components fitted on `train` (the serving bundle's), leaving this one as it is."""
        other = Reranker(self.params)
        other.trees, other.validation = self.trees, self.validation
        other.fit(train)
        return other

    @property
    def model(self) -> RerankModel:
        """What the service loads: the components and the trees as arrays (numpy alone)."""
        rankers = self.rankers
        return self.components.model(self.params, rankers["all"], rankers["new"])

    def history(self, users: np.ndarray) -> History:
        return history(self.train, users, self.components.country_index)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.scorer.score(self.history(users), self.train.split_ts, new_only=False)

    def recommend(self, users: np.ndarray, k: int, new_only: bool) -> np.ndarray:
        """Top-k through features.scoring.recommend, as the service ranks."""
        return recommend(self.scorer, self.history(users), self.train.split_ts, k, new_only)

    def describe(self) -> dict[str, object]:
        return {**asdict(self.params), **self.scorer.params()}
