"""The recommendation blend over arrays: the same decision as `recommend.blend`, computed in numpy over this request's
candidates instead of in dictionaries, for the request path.

Each signal is sparse: the model items it scores (indices into the champion's items, each once) and their values,
plus a small dict for items the model does not know (only trending and popular reach those). The candidates are the
union of the signals' items: a few hundred (the customer's precomputed list, the neighbours of the session, context
and cart items, the heads of trending and popular), never the whole catalog. Every term is computed over them in the
order `blend` adds it, so totals are bitwise the same; candidates are walked in the same order (score, then item id,
by a rank of the ids made once per model), so answers are identical: a property test runs both on random inputs.

What does not change from one request to the next (the candidates and their score before the category term, for a
customer without similarity signals) can be kept in a `CandidateCache` while its inputs are the same objects.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsvc.recommend import (
    DAY,
    CatalogEntry,
    Entry,
    LiveView,
    Request,
    ServingRecommender,
    Signals,
    effective_weights,
    reasons,
    token,
)
from recsvc.rules import ChannelRules, SegmentRules, Weights

SESSION_DECAY = 0.7
BUILD_CHUNK = 500  # items per step of a catalog build (about a tenth of a millisecond each)
WALK_CHUNK = 32  # candidates made into Python values at a time while walking
CATEGORY_FILTERS = 256  # `category` filters kept as masks per catalog snapshot (callers choose them: bounded)
_NO_ITEMS = np.zeros(0, dtype=np.int64)
Walked = tuple[str, float, int, int]  # item id, score, position among the candidates (-1: an extra), model index


@dataclass
class CatalogArrays:
    """The live catalog seen through the model's item index: availability and categories as arrays."""

    unavailable: np.ndarray  # bool (n,): the catalog says the item is not available
    cat_ids: np.ndarray  # int (n, c): category ids of each item, -1 pads
    cat_names: list[str]
    top_cat: list[str | None]  # each item's top-level category
    categories: list[Sequence[str]]  # each item's categories (catalog first, else as trained)
    available: np.ndarray = field(init=False, repr=False)
    _lookup: dict[str, int] = field(default_factory=dict, repr=False)
    _filters: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {c: j for j, c in enumerate(self.cat_names)}
        self.available = ~self.unavailable

    @property
    def cat_lookup(self) -> dict[str, int]:
        return self._lookup

    def in_category(self, want: str) -> np.ndarray:
        """bool (n,): the item has a category equal to `want` ignoring case (`want` already casefolded)."""
        mask = self._filters.get(want)
        if mask is None:
            ids = [j for j, name in enumerate(self.cat_names) if name.casefold() == want]
            mask = np.isin(self.cat_ids, ids).any(axis=1) if ids else np.zeros(len(self.unavailable), dtype=bool)
            if len(self._filters) >= CATEGORY_FILTERS:
                self._filters.clear()
            self._filters[want] = mask
        return mask

    @classmethod
    def build(cls, rec: ServingRecommender, catalog: Mapping[str, CatalogEntry]) -> "CatalogArrays":
        """At once: a few milliseconds for a few thousand items (see `build_async` for a background build)."""
        *_, arrays = cls._steps(rec, catalog)
        assert arrays is not None
        return arrays

    @classmethod
    async def build_async(cls, rec: ServingRecommender, catalog: Mapping[str, CatalogEntry]) -> "CatalogArrays":
        """As `build`, yielding to the event loop every BUILD_CHUNK items (a catalog reload must not hold up requests
        for milliseconds)."""
        for arrays in cls._steps(rec, catalog):
            if arrays is not None:
                return arrays
            await asyncio.sleep(0)
        raise AssertionError("CatalogArrays._steps ends with the arrays")

    @classmethod
    def _steps(cls, rec: ServingRecommender, catalog: Mapping[str, CatalogEntry]
               ) -> Iterator["CatalogArrays | None"]:
        """One dict lookup per item, a chunk of items per step (None each), then the arrays; each distinct list of
        categories (far fewer than items) is turned into ids once, at the end."""
        get = catalog.get
        n = rec.n_items
        unavailable: list[bool] = []
        cats: list[Sequence[str]] = []
        kinds: dict[tuple[str, ...], int] = {}
        kind: list[int] = []
        for lo in range(0, n, BUILD_CHUNK):
            entries = [get(item) for item in rec.item_ids[lo : lo + BUILD_CHUNK]]
            unavailable += [e is not None and not e.available for e in entries]
            part = [e.categories if e is not None else trained
                    for e, trained in zip(entries, rec.categories[lo : lo + BUILD_CHUNK])]
            cats += part
            kind += [kinds.setdefault(c if type(c) is tuple else tuple(c), len(kinds)) for c in part]
            yield
        names: dict[str, int] = {}
        width = max((len(c) for c in kinds), default=0) or 1
        rows = [[names.setdefault(c, len(names)) for c in cs] + [-1] * (width - len(cs)) for cs in kinds]
        table = np.array(rows or [[-1] * width], dtype=np.int64)
        tops = [cs[0] if cs else None for cs in kinds]
        cat_ids = table[np.array(kind, dtype=np.int64)] if kind else np.full((0, width), -1, dtype=np.int64)
        yield cls(np.array(unavailable, dtype=bool), cat_ids, list(names), [tops[k] for k in kind], cats)

    def patched(self, rec: ServingRecommender, changed: Mapping[str, CatalogEntry]) -> "CatalogArrays":
        """These arrays with some catalog entries replaced (an upsert made through this process): the same as a build
        from the updated catalog, at the cost of copying the arrays once."""
        at = [(i, e) for i, e in ((rec.item_index.get(item), e) for item, e in changed.items()) if i is not None]
        if not at:
            return self
        names = list(self.cat_names)
        lookup = dict(self._lookup)
        width = max(self.cat_ids.shape[1], max(len(e.categories) for _, e in at))
        cat_ids = np.full((len(self.cat_ids), width), -1, dtype=np.int64)
        cat_ids[:, : self.cat_ids.shape[1]] = self.cat_ids
        unavailable = self.unavailable.copy()
        top_cat = list(self.top_cat)
        categories = list(self.categories)
        for i, e in at:
            unavailable[i] = not e.available
            categories[i] = e.categories
            top_cat[i] = e.categories[0] if e.categories else None
            row = []
            for c in e.categories:
                j = lookup.get(c)
                if j is None:
                    j = lookup[c] = len(names)
                    names.append(c)
                row.append(j)
            cat_ids[i] = row + [-1] * (width - len(row))
        return CatalogArrays(unavailable, cat_ids, names, top_cat, categories)


@dataclass
class Sparse:
    """Scores of some of the model's items: `idx` (each item once) and `val`, in any order."""

    idx: np.ndarray
    val: np.ndarray


@dataclass
class Similarity:
    """Items near the seeds: max over seeds of (seed weight x similarity), and which seed gave it (the first on
    ties)."""

    idx: np.ndarray
    value: np.ndarray
    source: np.ndarray  # index into seeds
    seeds: list[str]


@dataclass
class SparseSignals:
    model: Sparse | None = None
    context: Similarity | None = None
    session: Similarity | None = None
    cart: Similarity | None = None
    trending: Sparse | None = None
    trending_extra: dict[str, float] = field(default_factory=dict)  # items the model does not know
    trending_label: str = ""
    popular: Sparse | None = None
    popular_extra: dict[str, float] = field(default_factory=dict)

    @property
    def has_model(self) -> bool:
        return self.model is not None and np.count_nonzero(self.model.val) > 0

    @property
    def has_similarity(self) -> bool:
        return any(s is not None and np.count_nonzero(s.value) > 0 for s in (self.session, self.context, self.cart))


def sparse(rec: ServingRecommender, scores: Mapping[str, float]) -> tuple[Sparse | None, dict[str, float]]:
    """A dict of item scores as model items and values, plus what the model does not know."""
    index = rec.item_index
    idx: list[int] = []
    val: list[float] = []
    extra: dict[str, float] = {}
    for item, v in scores.items():
        i = index.get(item)
        if i is None:
            extra[item] = v
        else:
            idx.append(i)
            val.append(v)
    if not idx:
        return None, extra
    return Sparse(np.array(idx, dtype=np.int64), np.array(val, dtype=np.float64)), extra


def similarity(rec: ServingRecommender, seeds: Sequence[str], decay: float = SESSION_DECAY) -> Similarity | None:
    """As `recommend.similarity_signal`: each seed's neighbours, the first seeds weighing most."""
    used = list(seeds)
    rows: list[tuple[int, float, int]] = []
    w = 1.0
    for j, seed in enumerate(used):
        i = rec.item_index.get(seed)
        if i is not None:
            rows.append((i, w, j))
        w *= decay
    if not rows:
        return None
    parts_idx, parts_v, parts_src = [], [], []
    for i, w, j in rows:
        nbr = rec.neighbours[i]
        ok = nbr >= 0
        v = w * rec.neighbour_scores[i][ok]
        pos = v > 0  # a zero never beats the empty start
        parts_idx.append(nbr[ok][pos])
        parts_v.append(v[pos])
        parts_src.append(np.full(int(pos.sum()), j, dtype=np.int64))
    if len(rows) == 1:
        idx, value, source = parts_idx[0], parts_v[0], parts_src[0]
    else:  # per item: the largest value, the earliest seed among equals
        idx, value, source = np.concatenate(parts_idx), np.concatenate(parts_v), np.concatenate(parts_src)
        order = np.lexsort((source, -value, idx))
        idx, value, source = idx[order], value[order], source[order]
        first = np.empty(len(idx), dtype=bool)
        first[:1] = True
        np.not_equal(idx[1:], idx[:-1], out=first[1:])
        idx, value, source = idx[first], value[first], source[first]
    return Similarity(idx.astype(np.int64, copy=False), value, source, used)


def precomputed_sparse(rec: ServingRecommender, person: str) -> tuple[Sparse, float] | None:
    """The bundle's candidates of a known customer (scaled like `precomputed`) and their purchase count."""
    u = rec.user_index.get(person)
    if u is None or rec.top_items.shape[1] == 0:
        return None
    if rec.top_len is not None:  # the usual bundle: each row's -1 pads at its end
        n = rec.top_len[u]
        return Sparse(rec.top_items[u, :n], rec.top_scores[u, :n]), rec.purchases_at[u]
    items = rec.top_items[u]
    ok = items >= 0
    return Sparse(items[ok], rec.top_scores[u][ok]), rec.purchases_at[u]


@dataclass
class Candidates:
    """What a blend works out before the parts that change with every request (category affinity, exclusions): the
    candidates (model indices, in index order), each signal over them (rows: model, trending, popular, then the value
    and the seed of each similarity), the score so far, the items the model does not know with theirs, and the
    catalog's categories and availability of the candidates."""

    cand: np.ndarray
    rows: np.ndarray
    total: np.ndarray
    extra: dict[str, float]
    cat_ids: np.ndarray
    available: np.ndarray
    made_from: tuple[object, ...]  # the objects it was computed from (a cache hit checks they are the same)


class CandidateCache:
    """Candidates by what they were computed from: the model, the catalog arrays, the model signal, the trending and
    popular snapshots (all by identity) and the weights. Only blends without similarity signals and repeat boosts
    use it (those depend on the live session and purchases). A customer's entry stays valid while those objects do:
    the model version, the catalog snapshot and the popularity snapshots (refreshed every RECSVC_POPULAR_REFRESH_S,
    kept as the same objects when unchanged); least recently used entries are dropped first."""

    def __init__(self, cap: int = 2048) -> None:
        self.cap = cap
        self._data: OrderedDict[tuple[object, ...], Candidates] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def get(self, key: tuple[object, ...], made_from: tuple[object, ...]) -> Candidates | None:
        hit = self._data.get(key)
        if hit is None or any(a is not b for a, b in zip(hit.made_from, made_from)):
            return None
        self._data.move_to_end(key)
        return hit

    def put(self, key: tuple[object, ...], value: Candidates) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.cap:
            self._data.popitem(last=False)


def candidates(rec: ServingRecommender, arrays: CatalogArrays, sig: SparseSignals, w: Weights,
               sims: list[tuple[Similarity, float]], live: LiveView, repeat_boost: float,
               made_from: tuple[object, ...] = ()) -> Candidates:
    """The union of the signals' items and the score so far: every term of `recommend.blend` but the category one,
    added in its order."""
    m, trend, pop = sig.model, sig.trending, sig.popular
    # the union of the signals' items, and where each signal's items are in it (np.unique is several times slower)
    present = [(r, s.idx, s.val) for r, s in enumerate((m, trend, pop)) if s is not None]
    present += [(3 + 2 * r, s.idx, s.value) for r, (s, _) in enumerate(sims)]
    if present:
        every = np.concatenate([idx for _, idx, _ in present]) if len(present) > 1 else present[0][1]
        mark = np.zeros(rec.n_items, dtype=bool)
        mark[every] = True
        cand = mark.nonzero()[0]
        inv = cand.searchsorted(every)
    else:
        cand = inv = _NO_ITEMS
    nc = len(cand)
    # each signal over the candidates, one row each (a similarity also has a row of its seeds), filled in one step;
    # the rows times their weights in one more
    rows = np.zeros((3 + 2 * len(sims), nc))
    if len(present) == 1:
        rows[present[0][0], inv] = present[0][2]
    elif present:
        rows[np.array([r for r, _, _ in present]).repeat([len(idx) for _, idx, _ in present]), inv] = (
            np.concatenate([v for _, _, v in present]))
    start, at_of = 0, {}
    for r, idx, _ in present:
        at_of[r] = inv[start : start + len(idx)]
        start += len(idx)
    for r, (s, _) in enumerate(sims):
        rows[4 + 2 * r, at_of[3 + 2 * r]] = s.source
    weights = np.array([w.model, w.trending, w.popular] + [x for _, weight in sims for x in (weight, 0.0)])
    weighted = rows * weights[:, None]

    total = weighted[0] if w.model and m is not None else np.zeros(nc)
    if repeat_boost and m is not None:
        ids, purchased = rec.item_ids, live.purchased
        hits = [p for p, i in enumerate(m.idx.tolist()) if ids[i] in purchased]
        bought = np.zeros(nc, dtype=bool)
        bought[at_of[0][hits]] = True
        total = total + repeat_boost * (rows[0] * bought)
    for r, (_, weight) in enumerate(sims):
        if weight:
            total = total + weighted[3 + 2 * r]
    extra: dict[str, float] = {}
    for r, s, ext, weight in ((1, trend, sig.trending_extra, w.trending), (2, pop, sig.popular_extra, w.popular)):
        if weight:
            if s is not None:
                total = total + weighted[r]
            for item, v in ext.items():
                extra[item] = extra.get(item, 0.0) + weight * v
    return Candidates(cand, rows, total, extra, arrays.cat_ids[cand], arrays.available[cand], made_from)


def blend_sparse(
    rec: ServingRecommender,
    arrays: CatalogArrays,
    sig: SparseSignals,
    live: LiveView,
    catalog: Mapping[str, CatalogEntry],
    rules: ChannelRules,
    seg: SegmentRules | None,
    req: Request,
    now: float,
    cache: CandidateCache | None = None,
) -> list[Entry]:
    """`recommend.blend` over the candidates; see the module docstring. `cache`: keep the candidates of blends
    without similarity signals or repeat boost for the next request on the same inputs (see CandidateCache)."""
    w = effective_weights(rules, seg)
    sims = [(s, weight) for s, weight in ((sig.context, w.context), (sig.session, w.session), (sig.cart, w.cart))
            if s is not None]
    repeat_boost = seg.repeat_boost if seg is not None and live.purchased else 0.0
    if cache is not None and not sims and not (repeat_boost and sig.model is not None):
        made_from = (rec, arrays, sig.model, sig.trending, sig.popular, sig.trending_extra, sig.popular_extra)
        key = (*map(id, made_from), w.model, w.trending, w.popular)
        c = cache.get(key, made_from)
        if c is None:
            c = candidates(rec, arrays, sig, w, sims, live, repeat_boost, made_from)
            cache.put(key, c)
    else:
        c = candidates(rec, arrays, sig, w, sims, live, repeat_boost)
    cand, rows, total, extra = c.cand, c.rows, c.total, dict(c.extra)
    aff = live.category_affinity
    if aff and w.category:
        by_id = np.zeros(len(arrays.cat_names) + 1)  # the last slot is the -1 pad
        lookup = arrays.cat_lookup
        slots, values = [], []
        for name, a in aff.items():
            j = lookup.get(name)
            if j is not None:
                slots.append(j)
                values.append(a)
        if slots:
            by_id[slots] = values
        per_cat = by_id[c.cat_ids]
        best_aff = per_cat[:, 0].copy()
        for j in range(1, per_cat.shape[1]):  # column by column: a reduce over a short axis costs more
            np.maximum(best_aff, per_cat[:, j], out=best_aff)
        total = total + w.category * np.where(total > 0, best_aff, 0.0)
        for item in extra:
            b = max((aff.get(name, 0.0) for name in _cats_of(item, catalog)), default=0.0)
            if b:
                extra[item] += w.category * b

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
    allowed = total > 0
    if rules.exclude_unavailable:
        allowed &= c.available
    want = req.category.casefold() if req.category else None
    if want is not None:
        allowed &= arrays.in_category(want)[cand]

    extras = []
    for item, score in extra.items():
        if score <= 0 or item in excluded:
            continue
        entry = catalog.get(item)
        if rules.exclude_unavailable and entry is not None and not entry.available:
            continue
        if want is not None and not any(name.casefold() == want for name in _cats_of(item, catalog)):
            continue
        extras.append((-score, item))
    extras.sort()

    keep = allowed.nonzero()[0]
    if rec.ids_sorted:  # candidates are in item id order already: a stable sort by score keeps it among equals
        order = keep[(-total[keep]).argsort(kind="stable")]
    else:
        order = keep[np.lexsort((rec.id_rank[cand[keep]], -total[keep]))]  # by score, then item id
    walk = _merged(order, total, cand, rec.item_ids, extras) if extras else _in_order(order, total, cand, rec.item_ids)
    chosen, skipped = _diversify(walk, excluded, arrays.top_cat, catalog, rules.max_per_category, req.k)
    if len(chosen) < req.k and skipped:  # a short answer is worse than a less diverse one
        chosen.extend(skipped[: req.k - len(chosen)])
        chosen.sort(key=lambda t: (-t[1], t[0]))
    return _explain(chosen, rows, sims, arrays, sig, live, catalog, w, repeat_boost)


def _explain(chosen: list[Walked], rows: np.ndarray, sims: list[tuple[Similarity, float]], arrays: CatalogArrays,
             sig: SparseSignals, live: LiveView, catalog: Mapping[str, CatalogEntry], w: Weights,
             repeat_boost: float) -> list[Entry]:
    """The entries with their reasons: each chosen entry's terms as `recommend._parts` lists them."""
    at = [p for _, _, p, _ in chosen if p >= 0]
    terms = dict(zip(at, rows[:, at].T.tolist())) if at else {}  # absent signals are rows of zeros
    sim_codes = [(3 + 2 * r, weight, s.seeds) for r, (s, weight) in enumerate(sims) if weight]
    aff = live.category_affinity if w.category else None
    segment_code = f"segment:{token(live.segment or '')}"
    trending_code = sig.trending_label or "trending"
    purchased, categories = live.purchased, arrays.categories
    w_model, w_category, w_trending, w_popular = w.model, w.category, w.trending, w.popular
    out = []
    for item, score, p, i in chosen:
        parts: list[tuple[float, str]] = []
        if p >= 0:
            col = terms[p]
            m, t, pop = col[0], col[1], col[2]
            if m:
                is_bought = item in purchased
                parts.append((w_model * m, "repeat" if is_bought else "for_you"))
                if is_bought and repeat_boost:
                    parts.append((repeat_boost * m, segment_code))
            for r, weight, seeds in sim_codes:
                v = col[r]
                if v:
                    parts.append((weight * v, f"similar_to:{seeds[int(col[r + 1])]}"))
            cats: Sequence[str] = categories[i]
        else:
            cats = _cats_of(item, catalog)
            t, pop = sig.trending_extra.get(item, 0.0), sig.popular_extra.get(item, 0.0)
        if aff:
            if len(cats) == 1:
                best = (aff.get(cats[0], 0.0), cats[0])
            else:
                best = max([(aff.get(c, 0.0), c) for c in cats], default=(0.0, ""))
            if best[0] > 0:
                parts.append((w_category * best[0], f"category:{token(best[1])}"))
        if t and w_trending:
            parts.append((w_trending * t, trending_code))
        if pop and w_popular:
            parts.append((w_popular * pop, "popular"))
        out.append(Entry(item, round(score, 6), reasons(parts)))
    return out


def _in_order(order: np.ndarray, total: np.ndarray, cand: np.ndarray, ids: list[str]) -> Iterator[Walked]:
    """(item id, score, candidate position, model index) along `order`, made into Python values a chunk at a time:
    the walk usually stops within the first."""
    for lo in range(0, len(order), WALK_CHUNK):
        part = order[lo : lo + WALK_CHUNK]
        for p, s, i in zip(part.tolist(), total[part].tolist(), cand[part].tolist()):
            yield ids[i], s, p, i


def _merged(order: np.ndarray, total: np.ndarray, cand: np.ndarray, ids: list[str],
            extras: list[tuple[float, str]]) -> Iterator[Walked]:
    """(item id, score, candidate position, model index) in (score descending, item id) order: the model's candidates
    (`order`, already so) merged with the extras ((-score, id) sorted; position and index -1)."""
    e, n = 0, len(extras)
    for item, s, p, i in _in_order(order, total, cand, ids):
        while e < n and (extras[e][0] < -s or (extras[e][0] == -s and extras[e][1] < item)):
            yield extras[e][1], -extras[e][0], -1, -1
            e += 1
        yield item, s, p, i
    for neg, item in extras[e:]:
        yield item, -neg, -1, -1


def _diversify(walk: Iterator[Walked], excluded: set[str], top_cat: list[str | None],
               catalog: Mapping[str, CatalogEntry], cap: int, k: int) -> tuple[list[Walked], list[Walked]]:
    """The first k entries of the walk that are not excluded, at most `cap` per top-level category; the entries the
    cap skipped (at most k) fill a short answer. Extras come already filtered."""
    chosen: list[Walked] = []
    skipped: list[Walked] = []
    per_cat: dict[str, int] = {}
    for entry in walk:
        i = entry[3]
        if i >= 0:
            if entry[0] in excluded:
                continue
            top = top_cat[i]
        else:
            top = (_cats_of(entry[0], catalog)[:1] or [None])[0]
        if top is not None:
            seen = per_cat.get(top, 0)
            if cap and seen >= cap:
                if len(skipped) < k:
                    skipped.append(entry)
                continue
            per_cat[top] = seen + 1
        chosen.append(entry)
        if len(chosen) >= k:
            break
    return chosen, skipped


def _cats_of(item: str, catalog: Mapping[str, CatalogEntry]) -> Sequence[str]:
    entry = catalog.get(item)
    return entry.categories if entry is not None else ()


def to_signals(rec: ServingRecommender, sig: SparseSignals) -> Signals:
    """The dict form of the same signals (for `recommend.blend`, and the test that both blends agree)."""
    ids = rec.item_ids

    def as_dict(s: Sparse | None, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        out = {ids[i]: v for i, v in zip(s.idx.tolist(), s.val.tolist()) if v} if s is not None else {}
        out.update(extra or {})
        return out

    def sim(s: Similarity | None) -> dict[str, tuple[float, str]]:
        if s is None:
            return {}
        return {ids[i]: (v, s.seeds[j]) for i, v, j in zip(s.idx.tolist(), s.value.tolist(), s.source.tolist()) if v}

    return Signals(model=as_dict(sig.model), session=sim(sig.session), context=sim(sig.context), cart=sim(sig.cart),
                   trending=as_dict(sig.trending, sig.trending_extra), trending_label=sig.trending_label,
                   popular=as_dict(sig.popular, sig.popular_extra))
