"""Recommendation decisions: plain values in, ranked entries with scores and reason codes out.

The same functions answer the API, the bulk paths and the tests; nothing here does I/O or knows Litestar.
Signals, each scaled to [0, 1] and weighted by the channel's rules (recsvc/rules.toml):
- model: the champion's ranking of this customer's candidates (precomputed in the bundle for customers it knows,
  or scored from the live profile with features.scoring for customers it does not);
- session / context / cart: item-to-item similarity (the champion's neighbour table) to what the customer touched
  in this session, the page's context item and the cart, most recent first;
- category: the customer's live category affinity; trending / popular: the live store's counters.
Rules then remove what must not be shown (returned, unavailable, bought within a cool-down, in the cart, excluded
by the caller, outside the requested category) and cap entries per top-level category for diversity.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import Any

import numpy as np

from features.scoring import NOT_CANDIDATE, Csr, History, RerankModel, top_k
from recsvc.rules import ChannelRules, SegmentRules, Weights

DAY = 86400.0
NEIGHBOURS = 50  # per item, kept from the similarity matrix for session boosts and /similar
SESSION_ITEMS = 5  # most recent session items that seed similarity
SESSION_DECAY = 0.7  # each older session item counts this much less
MAX_REASONS = 3
GIL_YIELD_ROWS = 8  # neighbour_table rows between releases of the GIL
POPULAR_HEAD = 50  # items of a popularity list that can reach a top k (the weakest signal: only its head)
PRE_CACHE = 100_000  # customers whose precomputed candidates are kept as dicts (about 5 KB each)


_NOT_TOKEN = re.compile(r"[^\w.-]+")


@lru_cache(maxsize=4096)
def token(name: str) -> str:
    """A name (segment, category, country) as it appears in a reason code: one token, so `segment:at risk` becomes
    `segment:at_risk`. Every run of characters other than letters, digits, `_`, `.` and `-` becomes one `_`; case is
    kept (`trending_in:GB`, `category:Kitchen`). Item ids are never passed through this: they are ids, already free of
    whitespace, and a client uses them as they are."""
    return _NOT_TOKEN.sub("_", name).strip("_") or "_"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _row_scaled(x: np.ndarray) -> np.ndarray:
    best = x.max(axis=1, keepdims=True) if x.size else np.ones((x.shape[0], 1))
    return np.divide(x, best, out=np.zeros_like(x), where=best > 0)


@dataclass(frozen=True)
class ServingRecommender:
    """The recommender champion as the service uses it: id maps, neighbour table, precomputed candidates, and the
    full re-rank model for customers the bundle does not know (or who bought since it was trained)."""

    item_ids: list[str]
    item_index: dict[str, int]
    user_index: dict[str, int]
    countries: dict[str, int]
    neighbours: np.ndarray  # (n_items, NEIGHBOURS) item indices, -1 pads
    neighbour_scores: np.ndarray  # (n_items, NEIGHBOURS) similarity / the row's best, in [0, 1]
    top_items: np.ndarray  # (n_users, n) item indices, -1 pads
    top_scores: np.ndarray  # (n_users, n) P(bought soon) by the re-ranker, divided by the row's best
    user_purchases: np.ndarray  # purchase events per user when the bundle was made
    popularity: np.ndarray  # (n_items,) recent buyers when trained
    categories: list[list[str]]
    categories_by_id: dict[str, list[str]]  # as trained: the fallback when the live catalog lacks an item
    model: RerankModel
    trained_until: float
    _pre_cache: dict[str, tuple[dict[str, float], float]] = field(default_factory=dict, compare=False, repr=False)
    # made once at load for the request path (recommend_arrays): each item's place in item id order (ties in score
    # go by id) and whether that is its index; each row's count of candidates when the -1 pads all come last (else
    # None); purchases as floats
    id_rank: np.ndarray = field(init=False, compare=False, repr=False)
    ids_sorted: bool = field(init=False, compare=False, repr=False)  # item_ids in id order: id_rank is the index
    top_len: list[int] | None = field(init=False, compare=False, repr=False)
    purchases_at: list[float] = field(init=False, compare=False, repr=False)
    # the model's own popularity head (recent buyers when it was trained), scaled so the best is 1: what serving uses
    # when the store has no popularity; one object per model, so what is derived from it can be kept by identity
    popular_head: dict[str, float] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        rank = np.empty(n, dtype=np.int64)
        rank[sorted(range(n), key=self.item_ids.__getitem__)] = np.arange(n)
        valid = self.top_items >= 0
        lens = valid.sum(axis=1)
        prefix = bool((valid == (np.arange(valid.shape[1]) < lens[:, None])).all())
        object.__setattr__(self, "id_rank", rank)
        object.__setattr__(self, "ids_sorted", bool((rank == np.arange(n)).all()))
        object.__setattr__(self, "top_len", lens.tolist() if prefix else None)
        object.__setattr__(self, "purchases_at", np.asarray(self.user_purchases, dtype=np.float64).tolist())
        top = self.popularity.argsort()[::-1][:POPULAR_HEAD]
        object.__setattr__(self, "popular_head",
                           scaled((self.item_ids[i], float(self.popularity[i])) for i in top.tolist()))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "ServingRecommender":
        """Build from a `recsvc-recommender` bundle; ValueError naming what is missing or inconsistent."""
        model = RerankModel.from_bundle(arrays, meta)
        item_ids = [str(i) for i in meta["item_ids"]]
        user_ids = [str(u) for u in meta.get("user_ids", [])]
        n_items, n_users = len(item_ids), len(user_ids)
        top_items = np.asarray(arrays.get("user_top_items", np.full((n_users, 0), -1)), dtype=np.int64)
        top_scores = np.asarray(arrays.get("user_top_scores", np.zeros((n_users, 0))), dtype=np.float64)
        if top_items.shape != top_scores.shape or top_items.shape[0] != n_users:
            raise ValueError(f"bundle: user_top_items {top_items.shape} / user_top_scores {top_scores.shape} do not "
                             f"match {n_users} user_ids")
        if top_items.size and (top_items.max() >= n_items or top_items.min() < -1):
            raise ValueError("bundle: user_top_items holds an item index outside item_ids")
        purchases = np.asarray(arrays.get("user_purchases", np.zeros(n_users)), dtype=np.float64)
        popularity = np.asarray(arrays.get("popularity", np.zeros(n_items)), dtype=np.float64)
        if popularity.shape != (n_items,):
            raise ValueError(f"bundle: popularity has shape {popularity.shape}, expected ({n_items},)")
        nbr, nbr_s = neighbour_table(model.similarity, NEIGHBOURS)
        cats = [[str(c) for c in cs] for cs in (meta.get("item_categories") or [[] for _ in item_ids])]
        if len(cats) != n_items:
            raise ValueError(f"bundle: item_categories has {len(cats)} entries for {n_items} items")
        return cls(
            item_ids=item_ids,
            item_index={it: i for i, it in enumerate(item_ids)},
            user_index={u: i for i, u in enumerate(user_ids)},
            countries={str(c): i for i, c in enumerate(meta.get("countries", []))},
            neighbours=nbr,
            neighbour_scores=nbr_s,
            top_items=top_items,
            top_scores=_row_scaled(np.where(np.isnan(top_scores), 0.0, _sigmoid(np.nan_to_num(top_scores)))),
            user_purchases=purchases,
            popularity=popularity,
            categories=cats,
            categories_by_id=dict(zip(item_ids, cats)),
            model=model,
            trained_until=float(meta.get("trained_until") or 0.0),
        )

    def precomputed(self, person: str) -> tuple[dict[str, float], float] | None:
        """The bundle's candidates for a known customer (item id -> P / best P) and their purchase count when
        trained."""
        hit = self._pre_cache.get(person)
        if hit is not None:
            return hit
        u = self.user_index.get(person)
        if u is None or self.top_items.shape[1] == 0:
            return None
        items, scores = self.top_items[u], self.top_scores[u]
        ok = items >= 0
        ids = self.item_ids
        out = {ids[i]: float(s) for i, s in zip(items[ok].tolist(), scores[ok].tolist())}, float(self.user_purchases[u])
        if len(self._pre_cache) >= PRE_CACHE:
            self._pre_cache.clear()  # rare: a cache of every customer the bundle knows rarely overflows
        self._pre_cache[person] = out
        return out

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        i = self.item_index.get(item_id)
        if i is None:
            return []
        out = []
        for j, s in zip(self.neighbours[i].tolist(), self.neighbour_scores[i].tolist()):
            if j < 0 or j == i:
                continue
            out.append((self.item_ids[j], float(s)))
            if len(out) >= k:
                break
        return out

    def score_live(self, history: "LiveHistory", now: float, n: int = 100) -> dict[str, float]:
        """Re-rank model scores from a live history (customers the bundle does not know, or who bought since),
        scaled like `precomputed`: P(bought soon) divided by the best."""
        h = self.history_arrays(history)
        if h is None:
            return {}
        s = self.model.score(h, now, new_only=False)
        top = top_k(s, n)[0]
        best = s[0, top]
        ok = best > NOT_CANDIDATE / 2
        return scaled((self.item_ids[i], float(p)) for i, p in zip(top[ok].tolist(), _sigmoid(best[ok]).tolist()))

    def history_arrays(self, history: "LiveHistory") -> History | None:
        ni = self.n_items
        interest = np.zeros((1, ni))
        purchases = np.zeros((1, ni))
        last = np.zeros((1, ni))
        idx = self.item_index
        for item, w in history.interest.items():
            i = idx.get(item)
            if i is not None and w > 0:
                interest[0, i] = w
        for item, (count, ts) in history.purchases.items():
            i = idx.get(item)
            if i is not None:
                purchases[0, i] = count
                last[0, i] = ts
        if not interest.any() and not purchases.any():
            return None
        country = np.array([self.countries.get(history.country or "", -1)], dtype=np.int64)
        return History(interest, purchases, last, country)


def neighbour_table(sim: Csr, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's m most similar items (indices, -1 pads; by similarity, then index) and similarity scaled by the
    row's best to [0, 1].

    Made when a model loads, in a worker thread while the event loop serves requests: every GIL_YIELD_ROWS rows (about
    a tenth of a millisecond) the loop releases the GIL, so the event loop waits at most that long for it instead of
    the interpreter's 5 ms switch interval (a vectorized version held it for one long sort, three times the CPU)."""
    n = sim.shape[0]
    nbr = np.full((n, m), -1, dtype=np.int64)
    score = np.zeros((n, m), dtype=np.float64)
    indptr, indices, data = sim.indptr, sim.indices, sim.data
    for r in range(n):
        if r % GIL_YIELD_ROWS == 0:
            time.sleep(0)
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        if hi <= lo:
            continue
        cols, vals = indices[lo:hi], data[lo:hi]
        keep = cols != r
        cols, vals = cols[keep], vals[keep]
        if not len(cols):
            continue
        order = np.lexsort((cols, -vals))[:m]
        best = float(vals[order[0]])
        nbr[r, : len(order)] = cols[order]
        score[r, : len(order)] = vals[order] / best if best > 0 else 0.0
    return nbr, score


def segments_summary(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the service keeps of the segments champion: the segment names and their sizes (priors for offers).
    Each customer's own segment, churn risk and value are published to the store and read with the profile."""
    try:
        segments = [str(s) for s in meta["segment"]]
        names = [str(s) for s in meta.get("segments", sorted(set(segments)))]
    except KeyError as exc:
        raise ValueError(f"segments bundle: missing {exc.args[0]!r}") from None
    sizes = {name: 0 for name in names}
    for s in segments:
        sizes[s] = sizes.get(s, 0) + 1
    return {"segments": names, "sizes": sizes, "customers": len(segments), "scored_at": meta.get("scored_at")}


# ---- the live inputs of a decision ----


@dataclass
class LiveHistory:
    """A customer's history as the model needs it: decayed interest and (count, last ts) per purchased item."""

    interest: dict[str, float]
    purchases: dict[str, tuple[float, float]]
    country: str | None

    @property
    def purchase_count(self) -> float:
        return sum(c for c, _ in self.purchases.values())


@dataclass
class LiveView:
    """What the feature store knows about the customer right now (empty for an unknown visitor)."""

    person: str
    known: bool = False
    country: str | None = None
    segment: str | None = None
    orders: int = 0
    purchased: set[str] = field(default_factory=set)  # every item bought
    purchased_recent: dict[str, float] = field(default_factory=dict)  # item -> last purchase ts, recent ones
    returned: set[str] = field(default_factory=set)
    cart: list[str] = field(default_factory=list)
    session_items: list[str] = field(default_factory=list)  # most recent first
    category_affinity: dict[str, float] = field(default_factory=dict)  # scaled to [0, 1]


@dataclass(frozen=True)
class CatalogEntry:
    available: bool
    categories: tuple[str, ...]
    title: str = ""


@dataclass(frozen=True)
class Request:
    channel: str
    k: int
    context_item: str | None = None
    exclude: frozenset[str] = frozenset()
    category: str | None = None
    country: str | None = None


@dataclass(slots=True)
class Entry:
    item_id: str
    score: float
    reasons: list[str]


@dataclass
class Signals:
    """Per-signal scores in [0, 1] by item id, with the source item of each similarity signal (for reasons)."""

    model: dict[str, float] = field(default_factory=dict)
    session: dict[str, tuple[float, str]] = field(default_factory=dict)
    context: dict[str, tuple[float, str]] = field(default_factory=dict)
    cart: dict[str, tuple[float, str]] = field(default_factory=dict)
    trending: dict[str, float] = field(default_factory=dict)
    trending_label: str = ""  # "trending_in:GB" or "trending_on:web"
    popular: dict[str, float] = field(default_factory=dict)


def scaled(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Scores divided by the best one (so the best is 1); empty or non-positive input gives {}."""
    items = [(k, v) for k, v in pairs if v > 0 and math.isfinite(v)]
    if not items:
        return {}
    best = max(v for _, v in items)
    return {k: v / best for k, v in items}


def similarity_signal(rec: ServingRecommender | None, seeds: Sequence[str], decay: float = SESSION_DECAY
                      ) -> dict[str, tuple[float, str]]:
    """item -> (best weighted similarity to any seed, that seed); seeds most important first."""
    out: dict[str, tuple[float, str]] = {}
    if rec is None:
        return out
    w = 1.0
    for seed in seeds:
        i = rec.item_index.get(seed)
        if i is not None:
            for j, s in zip(rec.neighbours[i].tolist(), rec.neighbour_scores[i].tolist()):
                if j < 0:
                    break
                v = w * s
                item = rec.item_ids[j]
                cur = out.get(item)
                if cur is None or v > cur[0]:
                    out[item] = (v, seed)
        w *= decay
    return out


def effective_weights(rules: ChannelRules, seg: SegmentRules | None) -> Weights:
    if seg is None or not seg.weights:
        return rules.weights
    from dataclasses import replace

    return replace(rules.weights, **seg.weights)


def blend(
    signals: Signals,
    live: LiveView,
    catalog: Mapping[str, CatalogEntry],
    rules: ChannelRules,
    seg: SegmentRules | None,
    req: Request,
    now: float,
    fallback_categories: Mapping[str, Sequence[str]] | None = None,
) -> list[Entry]:
    """Combine the signals, apply the rules, diversify, and return at most req.k entries, best first.

    Scores are summed signal by signal over the candidate pool; rules and diversity are applied walking the pool in
    score order, so only the entries near the top are inspected; reasons are worked out for the chosen entries only.
    """
    w = effective_weights(rules, seg)
    cats_of = _categories_lookup(catalog, fallback_categories)
    total: dict[str, float] = {}
    get = total.get
    if w.model:
        for item, v in signals.model.items():
            total[item] = get(item, 0.0) + w.model * v
    repeat_boost = seg.repeat_boost if seg is not None and live.purchased else 0.0
    if repeat_boost:
        for item in live.purchased:
            v = signals.model.get(item)
            if v:
                total[item] = get(item, 0.0) + repeat_boost * v
    for sim, weight in ((signals.context, w.context), (signals.session, w.session), (signals.cart, w.cart)):
        if weight:
            for item, (v, _) in sim.items():
                total[item] = get(item, 0.0) + weight * v
    for pop, weight in ((signals.trending, w.trending), (signals.popular, w.popular)):
        if weight:
            for item, v in pop.items():
                total[item] = get(item, 0.0) + weight * v
    aff = live.category_affinity
    if aff and w.category:
        for item in total:
            best = 0.0
            for c in cats_of(item):
                a = aff.get(c)
                if a is not None and a > best:
                    best = a
            if best:
                total[item] += w.category * best

    excluded = set(req.exclude)
    if req.context_item:
        excluded.add(req.context_item)
    if rules.exclude_returned:
        excluded |= live.returned
    if rules.exclude_in_cart:
        excluded.update(live.cart)
    if rules.purchased == "exclude":
        excluded |= live.purchased
    elif rules.purchased == "cooldown":
        horizon = now - rules.purchase_cooldown_days * DAY
        excluded.update(i for i, ts in live.purchased_recent.items() if ts >= horizon)
    want_cat = req.category.casefold() if req.category else None
    check_available = rules.exclude_unavailable
    cap = rules.max_per_category

    chosen: list[str] = []
    skipped: list[str] = []
    per_cat: dict[str, int] = {}
    for item, score in sorted(sorted(total.items()), key=itemgetter(1), reverse=True):  # ties: by item id
        if score <= 0:
            break
        if item in excluded:
            continue
        if check_available:
            entry = catalog.get(item)
            if entry is not None and not entry.available:
                continue
        cats = cats_of(item)
        if want_cat is not None and not any(c.casefold() == want_cat for c in cats):
            continue
        top = cats[0] if cats else None
        if cap and top is not None and per_cat.get(top, 0) >= cap:
            if len(skipped) < req.k:
                skipped.append(item)
            continue
        if top is not None:
            per_cat[top] = per_cat.get(top, 0) + 1
        chosen.append(item)
        if len(chosen) >= req.k:
            break
    if len(chosen) < req.k and skipped:  # a short answer is worse than a less diverse one
        chosen.extend(skipped[: req.k - len(chosen)])
        chosen.sort(key=lambda i: (-total[i], i))
    return [Entry(item, round(total[item], 6), reasons(_parts(item, signals, live, w, repeat_boost, cats_of)))
            for item in chosen]


def _parts(item: str, signals: Signals, live: LiveView, w: Weights, repeat_boost: float,
           cats_of: Any) -> list[tuple[float, str]]:
    """The weighted contribution of each signal to one item's score, with its reason code."""
    parts: list[tuple[float, str]] = []
    m = signals.model.get(item)
    if m:
        bought = item in live.purchased
        parts.append((w.model * m, "repeat" if bought else "for_you"))
        if bought and repeat_boost:
            parts.append((repeat_boost * m, f"segment:{token(live.segment or '')}"))
    for sig, weight in ((signals.context, w.context), (signals.session, w.session), (signals.cart, w.cart)):
        v = sig.get(item)
        if v and weight:
            parts.append((weight * v[0], f"similar_to:{v[1]}"))
    if live.category_affinity and w.category:
        scored = [(live.category_affinity.get(c, 0.0), c) for c in cats_of(item)]
        best = max(scored, default=(0.0, ""))
        if best[0] > 0:
            parts.append((w.category * best[0], f"category:{token(best[1])}"))
    t = signals.trending.get(item)
    if t and w.trending:
        parts.append((w.trending * t, signals.trending_label or "trending"))
    p = signals.popular.get(item)
    if p and w.popular:
        parts.append((w.popular * p, "popular"))
    return parts


def _categories_lookup(catalog: Mapping[str, CatalogEntry], fallback: Mapping[str, Sequence[str]] | None
                       ) -> Callable[[str], Sequence[str]]:
    cat_get = catalog.get
    fb_get = fallback.get if fallback is not None else None

    def cats_of(item: str) -> Sequence[str]:
        entry = cat_get(item)
        if entry is not None:
            return entry.categories
        if fb_get is not None:
            return fb_get(item, ())
        return ()

    return cats_of


def reasons(parts: Sequence[tuple[float, str]]) -> list[str]:
    """The codes of the signals that carry at least a quarter of the score, strongest first (at least one)."""
    if len(parts) == 1:
        return [parts[0][1]]
    if len(parts) == 2:  # the common case, without a sort: what the loop below does with two parts
        (v0, c0), (v1, c1) = parts
        total = 0.0 + v0 + v1
        if v1 > v0:
            v0, c0, v1, c1 = v1, c1, v0, c0
        return [c0] if c1 == c0 or v1 < 0.25 * total else [c0, c1]
    total = 0.0
    for v, _ in parts:
        total += v
    out: list[str] = []
    for v, code in sorted(parts, key=itemgetter(0), reverse=True):  # stable: equal values keep their order
        if code in out:
            continue
        if out and v < 0.25 * total:
            break
        out.append(code)
        if len(out) >= MAX_REASONS:
            break
    return out
