"""The recommendation blend over arrays: the same decision as `recommend.blend`, computed in numpy over the model's
item index instead of in dictionaries, for the request path.

Each signal is a dense vector over the champion's items (plus a small dict for items the model does not know, which
only trending, popular and category can reach). Terms are added in the same order as `blend` adds them, so totals are
bitwise the same; candidates are walked in the same order (score, then item id), so answers are identical: a property
test runs both on random inputs. What costs a dictionary operation per candidate there is one vector operation here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass
class CatalogArrays:
    """The live catalog seen through the model's item index: availability and categories as arrays."""

    unavailable: np.ndarray  # bool (n,): the catalog says the item is not available
    cat_ids: np.ndarray  # int (n, c): category ids of each item, -1 pads
    cat_names: list[str]
    top_cat: list[str | None]  # each item's top-level category
    categories: list[Sequence[str]]  # each item's categories (catalog first, else as trained)

    @property
    def cat_lookup(self) -> dict[str, int]:
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            lookup = self._lookup = {c: j for j, c in enumerate(self.cat_names)}
        return lookup

    @property
    def cat_columns(self) -> list[np.ndarray]:
        cols = getattr(self, "_cols", None)
        if cols is None:
            cols = [np.ascontiguousarray(self.cat_ids[:, j]) for j in range(self.cat_ids.shape[1])]
            self._cols = cols
        return cols

    @classmethod
    def build(cls, rec: ServingRecommender, catalog: Mapping[str, CatalogEntry]) -> "CatalogArrays":
        n = rec.n_items
        unavailable = np.zeros(n, dtype=bool)
        cats: list[Sequence[str]] = []
        for i, item in enumerate(rec.item_ids):
            entry = catalog.get(item)
            if entry is not None:
                unavailable[i] = not entry.available
                cats.append(entry.categories)
            else:
                cats.append(rec.categories[i])
        names: dict[str, int] = {}
        width = max((len(c) for c in cats), default=0) or 1
        cat_ids = np.full((n, width), -1, dtype=np.int64)
        for i, cs in enumerate(cats):
            for j, c in enumerate(cs):
                cat_ids[i, j] = names.setdefault(c, len(names))
        return cls(unavailable, cat_ids, list(names), [c[0] if c else None for c in cats], cats)


@dataclass
class Similarity:
    """max over seeds of (seed weight x similarity), and which seed gave it (-1: none)."""

    value: np.ndarray
    source: np.ndarray
    seeds: list[str]


@dataclass
class DenseSignals:
    model: np.ndarray | None = None
    context: Similarity | None = None
    session: Similarity | None = None
    cart: Similarity | None = None
    trending: np.ndarray | None = None
    trending_extra: dict[str, float] = field(default_factory=dict)  # items the model does not know
    trending_label: str = ""
    popular: np.ndarray | None = None
    popular_extra: dict[str, float] = field(default_factory=dict)

    @property
    def has_model(self) -> bool:
        return self.model is not None and bool(self.model.any())

    @property
    def has_similarity(self) -> bool:
        return any(s is not None and bool(s.value.any()) for s in (self.session, self.context, self.cart))


def dense(rec: ServingRecommender, scores: Mapping[str, float]) -> tuple[np.ndarray, dict[str, float]]:
    """A dict of item scores as a vector over the model's items, plus what the model does not know."""
    out = np.zeros(rec.n_items)
    extra: dict[str, float] = {}
    index = rec.item_index
    for item, v in scores.items():
        i = index.get(item)
        if i is None:
            extra[item] = v
        else:
            out[i] = v
    return out, extra


def similarity(rec: ServingRecommender, seeds: Sequence[str], decay: float = SESSION_DECAY) -> Similarity | None:
    """As `recommend.similarity_signal`: each seed's neighbours, the first seeds weighing most."""
    value = np.zeros(rec.n_items)
    source = np.full(rec.n_items, -1, dtype=np.int64)
    w, used, any_seed = 1.0, list(seeds), False
    for j, seed in enumerate(used):
        i = rec.item_index.get(seed)
        if i is not None:
            nbr = rec.neighbours[i]
            ok = nbr >= 0
            idx, v = nbr[ok], w * rec.neighbour_scores[i][ok]
            better = v > value[idx]
            value[idx[better]] = v[better]
            source[idx[better]] = j
            any_seed = True
        w *= decay
    return Similarity(value, source, used) if any_seed else None


def precomputed_dense(rec: ServingRecommender, person: str) -> tuple[np.ndarray, float] | None:
    """The bundle's candidates of a known customer as a vector (scaled like `precomputed`) and their purchase count."""
    u = rec.user_index.get(person)
    if u is None or rec.top_items.shape[1] == 0:
        return None
    items, scores = rec.top_items[u], rec.top_scores[u]
    ok = items >= 0
    out = np.zeros(rec.n_items)
    out[items[ok]] = scores[ok]
    return out, float(rec.user_purchases[u])


def blend_dense(
    rec: ServingRecommender,
    arrays: CatalogArrays,
    sig: DenseSignals,
    live: LiveView,
    catalog: Mapping[str, CatalogEntry],
    rules: ChannelRules,
    seg: SegmentRules | None,
    req: Request,
    now: float,
) -> list[Entry]:
    """`recommend.blend` over arrays; see the module docstring."""
    w = effective_weights(rules, seg)
    n = rec.n_items
    index = rec.item_index
    total = np.zeros(n)
    extra: dict[str, float] = {}
    model = sig.model if sig.model is not None else None
    if w.model and model is not None:
        total = w.model * model
    repeat_boost = seg.repeat_boost if seg is not None and live.purchased else 0.0
    if repeat_boost and model is not None:
        bought = np.zeros(n, dtype=bool)
        for item in live.purchased:
            i = index.get(item)
            if i is not None:
                bought[i] = True
        total = total + repeat_boost * (model * bought)
    for s, weight in ((sig.context, w.context), (sig.session, w.session), (sig.cart, w.cart)):
        if weight and s is not None:
            total = total + weight * s.value
    for vec, ext, weight in ((sig.trending, sig.trending_extra, w.trending),
                             (sig.popular, sig.popular_extra, w.popular)):
        if weight:
            if vec is not None:
                total = total + weight * vec
            for item, v in ext.items():
                extra[item] = extra.get(item, 0.0) + weight * v
    aff = live.category_affinity
    if aff and w.category:
        by_id = np.zeros(len(arrays.cat_names) + 1)  # the last slot is the -1 pad
        lookup = arrays.cat_lookup
        for c, a in aff.items():
            j = lookup.get(c)
            if j is not None:
                by_id[j] = a
        cols = arrays.cat_columns
        best = by_id[cols[0]]
        for col in cols[1:]:  # column by column: numpy's reduce over a short axis is slow
            np.maximum(best, by_id[col], out=best)
        total = total + w.category * np.where(total > 0, best, 0.0)
        for item in extra:
            b = max((aff.get(c, 0.0) for c in _cats_of(item, catalog)), default=0.0)
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
    for item in excluded:
        i = index.get(item)
        if i is not None:
            allowed[i] = False
    if rules.exclude_unavailable:
        allowed &= ~arrays.unavailable
    want = req.category.casefold() if req.category else None
    if want is not None:
        ids = [j for j, name in enumerate(arrays.cat_names) if name.casefold() == want]
        allowed &= np.isin(arrays.cat_ids, ids).any(axis=1) if ids else False

    extras = []
    for item, score in extra.items():
        if score <= 0 or item in excluded:
            continue
        entry = catalog.get(item)
        if rules.exclude_unavailable and entry is not None and not entry.available:
            continue
        cats = _cats_of(item, catalog)
        if want is not None and not any(c.casefold() == want for c in cats):
            continue
        extras.append((score, item))

    candidates = np.nonzero(allowed)[0]
    m = min(len(candidates), 4 * req.k + 16)
    while True:
        chosen, skipped, done = _walk(rec, arrays, total, candidates, m, extras, catalog, rules, req)
        if done or m >= len(candidates):
            break
        m = min(len(candidates), 4 * m)
    scores = {item: (float(total[index[item]]) if item in index else extra[item]) for item in chosen + skipped}
    if len(chosen) < req.k and skipped:  # a short answer is worse than a less diverse one
        chosen.extend(skipped[: req.k - len(chosen)])
        chosen.sort(key=lambda i: (-scores[i], i))
    parts = _all_parts(chosen, rec, arrays, sig, live, catalog, w, repeat_boost)
    return [Entry(item, round(scores[item], 6), reasons(p)) for item, p in zip(chosen, parts)]


def _walk(rec: ServingRecommender, arrays: CatalogArrays, total: np.ndarray, candidates: np.ndarray, m: int,
          extras: list[tuple[float, str]], catalog: Mapping[str, CatalogEntry], rules: ChannelRules,
          req: Request) -> tuple[list[str], list[str], bool]:
    """Walk the best `m` allowed model items and the extras in (score, id) order, applying diversity. `done` is
    False when the walk ran past the m model items with more left (the caller widens m and walks again)."""
    if m < len(candidates):
        part = candidates[np.argpartition(-total[candidates], m - 1)[:m]]
    else:
        part = candidates
    ids = rec.item_ids
    idx = part.tolist()
    order = list(zip(total[part].tolist(), [ids[i] for i in idx], idx))
    order += [(score, item, -1) for score, item in extras]
    order.sort(key=lambda t: (-t[0], t[1]))
    floor = float(total[part].min()) if m < len(candidates) and len(part) else None
    chosen: list[str] = []
    skipped: list[str] = []
    per_cat: dict[str, int] = {}
    cap = rules.max_per_category
    for score, item, i in order:
        if floor is not None and score <= floor:
            return chosen, skipped, False  # from here on, model items outside the m walked may come first
        top = arrays.top_cat[i] if i >= 0 else (_cats_of(item, catalog)[:1] or [None])[0]
        if cap and top is not None and per_cat.get(top, 0) >= cap:
            if len(skipped) < req.k:
                skipped.append(item)
            continue
        if top is not None:
            per_cat[top] = per_cat.get(top, 0) + 1
        chosen.append(item)
        if len(chosen) >= req.k:
            return chosen, skipped, True
    return chosen, skipped, floor is None  # every candidate walked


def _cats_of(item: str, catalog: Mapping[str, CatalogEntry]) -> Sequence[str]:
    entry = catalog.get(item)
    return entry.categories if entry is not None else ()


def _all_parts(items: list[str], rec: ServingRecommender, arrays: CatalogArrays, sig: DenseSignals, live: LiveView,
               catalog: Mapping[str, CatalogEntry], w: Weights, repeat_boost: float) -> list[list[tuple[float, str]]]:
    """As `recommend._parts` for each chosen item, with the array lookups done once for all of them."""
    index = rec.item_index
    pos = [index.get(item, -1) for item in items]
    known = np.array([p for p in pos if p >= 0], dtype=np.int64)

    def column(vec: np.ndarray | None) -> dict[int, float]:
        if vec is None or not len(known):
            return {}
        return dict(zip(known.tolist(), vec[known].tolist()))

    model = column(sig.model)
    sims = []
    for s, weight in ((sig.context, w.context), (sig.session, w.session), (sig.cart, w.cart)):
        if s is not None and weight and len(known):
            sims.append((weight, dict(zip(known.tolist(), zip(s.value[known].tolist(), s.source[known].tolist()))),
                         s.seeds))
    trending, popular = column(sig.trending), column(sig.popular)
    aff = live.category_affinity if w.category else None
    out = []
    for item, i in zip(items, pos):
        parts: list[tuple[float, str]] = []
        if i >= 0:
            m = model.get(i, 0.0)
            if m:
                is_bought = item in live.purchased
                parts.append((w.model * m, "repeat" if is_bought else "for_you"))
                if is_bought and repeat_boost:
                    parts.append((repeat_boost * m, f"segment:{token(live.segment or '')}"))
            for weight, values, seeds in sims:
                v, src = values[i]
                if v:
                    parts.append((weight * v, f"similar_to:{seeds[src]}"))
            cats: Sequence[str] = arrays.categories[i]
            t, p = trending.get(i, 0.0), popular.get(i, 0.0)
        else:
            cats = _cats_of(item, catalog)
            t, p = sig.trending_extra.get(item, 0.0), sig.popular_extra.get(item, 0.0)
        if aff:
            best = max([(aff.get(c, 0.0), c) for c in cats], default=(0.0, ""))
            if best[0] > 0:
                parts.append((w.category * best[0], f"category:{token(best[1])}"))
        if t and w.trending:
            parts.append((w.trending * t, sig.trending_label or "trending"))
        if p and w.popular:
            parts.append((w.popular * p, "popular"))
        out.append(parts)
    return out


def to_signals(rec: ServingRecommender, sig: DenseSignals) -> Signals:
    """The dict form of the same signals (for `recommend.blend`, and the test that both blends agree)."""
    ids = rec.item_ids

    def as_dict(vec: np.ndarray | None, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        out = {ids[i]: float(vec[i]) for i in np.nonzero(vec)[0].tolist()} if vec is not None else {}
        out.update(extra or {})
        return out

    def sim(s: Similarity | None) -> dict[str, tuple[float, str]]:
        if s is None:
            return {}
        return {ids[i]: (float(s.value[i]), s.seeds[int(s.source[i])]) for i in np.nonzero(s.value)[0].tolist()}

    return Signals(model=as_dict(sig.model), session=sim(sig.session), context=sim(sig.context), cart=sim(sig.cart),
                   trending=as_dict(sig.trending, sig.trending_extra), trending_label=sig.trending_label,
                   popular=as_dict(sig.popular, sig.popular_extra))
