"""The recommendation service: reads the live features, gathers the signals, asks recsvc.recommend to decide.

Per request it costs one profile read from the store (two pipelined round trips); popularity, trending and the catalog
come from in-process snapshots refreshed in the background, so a request never waits on them and they keep serving
(stale) when the store is down. When the profile read fails or overruns its timeout, the answer is built from the
model and the snapshots alone and marked `degraded`; similar items likewise when a read they need fails (`similar`).

Model scores: the champion bundle holds each known customer's ranked candidates. A customer it does not know, or who
has bought since it was trained, is scored from the live profile by the full re-rank model in a worker thread; the
answer in between uses what there is (the bundle's list, session and trending signals), and the next request gets the
fresh scores from a small cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import numpy as np

from features.clock import Clock
from features.schema import DecisionRecord, Item, LiveFeatures, Profile
from features.store import FeatureStore, StoreUnavailable
from recsvc.decisions import DecisionLogger, new_decision_id
from recsvc.metrics import DEGRADED, FALLBACKS
from recsvc.models import RECOMMENDER, LoadedModel, ModelRegistry
from recsvc.recommend import (
    DAY,
    POPULAR_HEAD,
    CatalogEntry,
    Entry,
    LiveHistory,
    LiveView,
    Request,
    ServingRecommender,
    Signals,
    blend,
    scaled,
    token,
)
from recsvc.recommend_arrays import (
    CandidateCache,
    CatalogArrays,
    Sparse,
    SparseSignals,
    blend_sparse,
    precomputed_sparse,
    similarity,
    sparse,
)
from recsvc.rules import Rules

log = logging.getLogger("recsvc.serving")

POPULAR_TTL_S = 10.0  # snapshot age after which a background refresh starts
POPULAR_SCOPES = 1024  # (scope, window) snapshots with something in them kept, least recently used dropped first
POPULAR_EMPTY = 256  # scopes that had nothing (a country nobody buys in), kept apart so they never push out the others
CATALOG_TTL_S = 30.0
CANDIDATES = POPULAR_HEAD  # from each popularity list
LIVE_CACHE = 20_000  # customers whose live model scores are kept
PRECOMPUTED_CACHE = 50_000  # customers whose bundle candidates are kept as model items
CANDIDATE_CACHE = 2_048  # customers whose blend candidates are kept (some 10 KB each)
_NO_SCORES = Sparse(np.zeros(0, dtype=np.int64), np.zeros(0))
_NO_EXTRA: dict[str, float] = {}  # shared: never written to
_json = msgspec.json.Encoder()


class Recommendation(msgspec.Struct, omit_defaults=True):
    item_id: str
    score: float
    reasons: list[str]
    title: str | None = None


class RecommendationsAnswer(msgspec.Struct):
    customer_id: str
    channel: str
    decision_id: str
    model: str | None  # registered model name, null when no champion is loaded
    model_version: str | None
    degraded: bool
    source: str  # personalized | session | popular
    items: list[Recommendation]


class SimilarAnswer(msgspec.Struct):
    item_id: str
    channel: str
    decision_id: str
    model: str | None
    model_version: str | None
    degraded: bool
    items: list[Recommendation]


# ---- in-process snapshots ----


class PopularSnapshots:
    """Top items per (scope, window) from the store, scaled so the best is 1, refreshed in the background once
    older than `ttl_s`.

    Scopes come partly from callers (`co:<country>`), so the cache is bounded: at most `max_scopes` snapshots with
    items, least recently used dropped first, and at most `max_empty` scopes remembered as empty for `ttl_s` (a value
    asked for again costs no store read meanwhile; a flood of made-up countries only churns this second list, never
    the snapshots that answers use)."""

    def __init__(self, store: Callable[[], FeatureStore], ttl_s: float = POPULAR_TTL_S, k: int = CANDIDATES,
                 max_scopes: int = POPULAR_SCOPES, max_empty: int = POPULAR_EMPTY) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.k = k
        self.max_scopes = max_scopes
        self.max_empty = max_empty
        self._data: OrderedDict[tuple[str, str], tuple[float, dict[str, float]]] = OrderedDict()
        self._empty: OrderedDict[tuple[str, str], float] = OrderedDict()  # scope -> when it was found empty
        self._refreshing: set[tuple[str, str]] = set()
        self._inflight: dict[tuple[str, str], asyncio.Future[None]] = {}  # first reads of a scope, shared by waiters
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._data) + len(self._empty)

    async def get(self, scope: str, window: str) -> dict[str, float]:
        """The snapshot; {} when the scope has nothing or the store does not answer (see `read`)."""
        try:
            return await self.read(scope, window)
        except StoreUnavailable:
            return {}

    def current(self, scope: str, window: str) -> dict[str, float] | None:
        """The snapshot this process holds (starting a background refresh when it is old), None when it holds none:
        `read` without a coroutine, for the request path."""
        key = (scope, window)
        hit = self._data.get(key)
        if hit is None:
            return None
        self._data.move_to_end(key)
        if time.monotonic() - hit[0] > self.ttl_s and key not in self._refreshing:
            self._refreshing.add(key)
            task = asyncio.create_task(self._refresh(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return hit[1]

    async def read(self, scope: str, window: str) -> dict[str, float]:
        """The snapshot, read from the store when this process has none (StoreUnavailable when that read fails)."""
        key = (scope, window)
        hit = self.current(scope, window)
        if hit is None:
            found = self._empty.get(key)
            if found is not None and time.monotonic() - found <= self.ttl_s:
                return {}
            # one read per scope however many requests miss it at once (a burst of 32 used to read it 32 times)
            pending = self._inflight.get(key)
            if pending is None:
                pending = self._inflight[key] = asyncio.ensure_future(self._fetch(key))
                pending.add_done_callback(lambda _f, key=key: self._inflight.pop(key, None))
            await asyncio.shield(pending)
            got = self._data.get(key)
            return got[1] if got is not None else {}
        return hit

    def cached(self, scope: str, window: str) -> dict[str, float]:
        """What the snapshot holds, however old, without asking the store (degraded mode)."""
        hit = self._data.get((scope, window))
        return hit[1] if hit is not None else {}

    async def _fetch(self, key: tuple[str, str]) -> None:
        rows = scaled(await self._store().popular(key[0], key[1], k=self.k))  # type: ignore[arg-type]
        now = time.monotonic()
        if rows:
            self._empty.pop(key, None)
            held = self._data.get(key)
            if held is not None and held[1] == rows:
                rows = held[1]  # unchanged: the same object, so what was derived from it stays cached
            self._data[key] = (now, rows)
            self._data.move_to_end(key)
            while len(self._data) > self.max_scopes:
                self._data.popitem(last=False)
        else:
            self._data.pop(key, None)
            self._empty[key] = now
            self._empty.move_to_end(key)
            while len(self._empty) > self.max_empty:
                self._empty.popitem(last=False)

    async def _refresh(self, key: tuple[str, str]) -> None:
        try:
            await self._fetch(key)
        except StoreUnavailable:
            pass  # keep the stale snapshot; retried on a later request
        finally:
            self._refreshing.discard(key)


class CatalogSnapshot:
    """Availability, categories and titles of every catalog item. Every `ttl_s` a background check reads the
    store's catalog version and reloads the snapshot only when it moved. A reload reads the whole catalog in small
    chunks (each a short read, well inside the store's timeout; a chunk that fails is retried), yielding to the event
    loop between them, then lets `prepare` derive what requests need from it (still in the background) before the
    new snapshot is published; `note` applies an upsert made through this process at once, through `patch`."""

    CHUNK = 100  # items per read: redis-py decodes a chunk in one go, on the event loop
    RETRIES = 2

    def __init__(self, store: Callable[[], FeatureStore], ttl_s: float = CATALOG_TTL_S,
                 prepare: Callable[[dict[str, CatalogEntry]], Awaitable[None]] | None = None,
                 patch: Callable[[dict[str, CatalogEntry], dict[str, CatalogEntry], dict[str, CatalogEntry]], None]
                 | None = None) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.items: dict[str, CatalogEntry] = {}
        self.version: int | None = None
        self.checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._prepare = prepare
        self._patch = patch

    def note(self, items: list[Item]) -> None:
        """Apply an upsert made through this process at once (other workers catch up within ttl_s)."""
        changed = {it.item_id: CatalogEntry(it.available, tuple(it.categories), it.title) for it in items}
        old = self.items
        updated = dict(old)
        updated.update(changed)
        if self._patch is not None:
            self._patch(old, updated, changed)
        self.items = updated

    async def load(self) -> None:
        store = self._store()
        version = await store.catalog_version()
        ids = await store.item_ids()
        out: dict[str, CatalogEntry] = {}
        for start in range(0, len(ids), self.CHUNK):
            chunk = ids[start : start + self.CHUNK]
            for attempt in range(self.RETRIES + 1):
                try:
                    got = await store.get_items(chunk)
                    break
                except StoreUnavailable:
                    if attempt == self.RETRIES:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            for item_id, it in got.items():
                out[item_id] = CatalogEntry(it.available, tuple(it.categories), it.title)
        if self._prepare is not None:
            await self._prepare(out)
        self.items = out
        self.version = version

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if self.checked_at is not None and now - self.checked_at <= self.ttl_s:
            return
        if self._task is None or self._task.done():
            self.checked_at = now
            self._task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            if self.version is None or await self._store().catalog_version() != self.version:
                await self.load()
        except StoreUnavailable as exc:
            log.warning("catalog snapshot not refreshed: %s", exc)

    async def wait(self) -> None:
        """Until a refresh in flight is done (tests, start-up)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class LiveScores:
    """Model scores computed from live profiles, keyed by model version and person and valid while the person's
    purchase count is unchanged; computed off the request path (profile read, then numpy in a worker thread)."""

    def __init__(self, cap: int = LIVE_CACHE) -> None:
        self.cap = cap
        self._cache: OrderedDict[tuple[str, str], tuple[int, Sparse]] = OrderedDict()
        self._pending: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-scores")

    def get(self, model: LoadedModel[ServingRecommender], person: str, orders: int) -> Sparse | None:
        """The live scores of `person` under this model, as model items and values, while their purchase count is
        `orders`; None when none are ready."""
        key = (model.version, person)
        hit = self._cache.get(key)
        if hit is None or hit[0] != orders:
            return None
        self._cache.move_to_end(key)
        return hit[1]

    def schedule(self, model: LoadedModel[ServingRecommender], person: str, orders: int,
                 store: Callable[[], FeatureStore], now: float) -> None:
        key = (model.version, person)
        if key in self._pending:
            return
        self._pending.add(key)
        task = asyncio.create_task(self._score(key, model, person, orders, store, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, key: tuple[str, str], model: LoadedModel[ServingRecommender], person: str, orders: int,
                     store: Callable[[], FeatureStore], now: float) -> None:
        try:
            profile = await store().profile(person, now=now)
            if profile is None:
                return
            history = live_history(profile)
            scores = await asyncio.get_running_loop().run_in_executor(self._pool, model.model.score_live, history, now)
            self._cache[key] = (orders, sparse(model.model, scores)[0] or _NO_SCORES)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cap:
                self._cache.popitem(last=False)
        except StoreUnavailable:
            pass
        except Exception:  # a scoring bug must not take the request path down; the bundle's list keeps serving
            log.exception("live scoring of %s failed", person)
        finally:
            self._pending.discard(key)

    async def drain(self) -> None:
        """Wait for scoring in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---- building the live view ----


def live_view(f: LiveFeatures) -> LiveView:
    """The decision inputs from the store's live read, category affinity scaled to [0, 1]."""
    return LiveView(
        person=f.person,
        known=True,
        country=f.country,
        segment=f.traits.get("segment"),
        orders=f.orders,
        purchased=set(f.purchased),
        purchased_recent=f.purchased_since,
        returned=set(f.returned),
        cart=f.cart,
        session_items=f.session_items,
        category_affinity=scaled(f.category_affinity),
    )


def live_history(profile: Profile) -> LiveHistory:
    """A customer's history for the re-rank model, from their full profile (purchase counts from recent events)."""
    counts: dict[str, int] = {}
    for r in profile.recent:
        if r.type == "purchase" and r.item_id:
            counts[r.item_id] = counts.get(r.item_id, 0) + 1
    purchases = {item: (float(max(1, counts.get(item, 0))), ts) for item, ts in profile.purchased.items()}
    return LiveHistory(dict(profile.item_affinity), purchases, profile.country)


@dataclass
class Outcome:
    entries: list[Entry]
    source: str
    degraded: bool
    model: LoadedModel[ServingRecommender] | None
    person: str


class RecommendationService:
    """Owns the snapshots and caches; `recommend` and `similar` are the two decisions it serves."""

    def __init__(self, store: Callable[[], FeatureStore], models: ModelRegistry, rules: Rules, clock: Clock,
                 decisions: DecisionLogger, catalog_ttl_s: float = CATALOG_TTL_S,
                 popular_ttl_s: float = POPULAR_TTL_S) -> None:
        self._store = store
        self.models = models
        self.rules = rules
        self.clock = clock
        self.decisions = decisions
        self.popular = PopularSnapshots(store, popular_ttl_s)
        self.catalog = CatalogSnapshot(store, catalog_ttl_s, prepare=self._prepare_arrays, patch=self._patch_arrays)
        self.live_scores = LiveScores()
        # the catalog through the model's index, per (catalog snapshot, model version): the newest few
        self._arrays: OrderedDict[tuple[int, str], tuple[dict[str, CatalogEntry], CatalogArrays]] = OrderedDict()
        self._sparse_cache: dict[tuple[int, str], tuple[dict[str, float], Sparse | None, dict[str, float]]] = {}
        # per customer: the bundle's candidates as model items (the same object every time, so that what the blend
        # derives from them can be kept too), and those derived candidates (recommend_arrays.CandidateCache)
        self._precomputed: OrderedDict[tuple[str, str], tuple[Sparse, float]] = OrderedDict()
        self.candidates = CandidateCache(CANDIDATE_CACHE)
        self._kept_for: str | None = None  # the model version those two hold

    def close(self) -> None:
        self.live_scores.close()

    def recommender(self) -> LoadedModel[ServingRecommender] | None:
        return self.models.get(RECOMMENDER)

    async def recommend(self, customer_id: str, req: Request) -> RecommendationsAnswer:
        out = await self.decide(customer_id, req)
        return self._answer(customer_id, req, out)

    async def decide(self, customer_id: str, req: Request) -> Outcome:
        now = self.clock()
        self.catalog.maybe_refresh()
        model = self.recommender()
        rec = model.model if model is not None else None
        if model is not None and model.version != self._kept_for:  # a new champion: nothing kept of the old one
            self._kept_for = model.version
            self._precomputed.clear()
            self.candidates.clear()
        degraded = False
        rules = self.rules.for_channel(req.channel)
        try:
            feats = await self._store().live(customer_id, now - rules.purchase_cooldown_days * DAY, now=now)
        except StoreUnavailable:
            feats, degraded = None, True
            DEGRADED.labels("recommendations").inc()
            FALLBACKS.labels("recommendations", "degraded").inc()
        live = live_view(feats) if feats is not None else LiveView(person=customer_id)
        country = live.country or req.country
        snapshot = self.popular.cached if degraded else None  # degraded: what is in hand, never the store
        scope = f"co:{country}" if country else f"ch:{req.channel}"
        trend = snapshot(scope, "trend") if snapshot else (self.popular.current(scope, "trend")
                                                             or await self.popular.get(scope, "trend"))
        label = f"trending_in:{token(country)}" if country else f"trending_on:{req.channel}"
        if not trend and country:  # nothing trending in the country right now: the channel's trend
            scope = f"ch:{req.channel}"
            trend = snapshot(scope, "trend") if snapshot else await self.popular.get(scope, "trend")
            label = f"trending_on:{req.channel}"
        popular = snapshot("all", "pop") if snapshot else (self.popular.current("all", "pop")
                                                           or await self.popular.get("all", "pop"))
        seg = self.rules.segment(live.segment)
        catalog = self.catalog.items
        if rec is None:  # no champion: trending and popular only, through the reference blend
            sig = Signals(trending=trend, trending_label=label, popular=popular)
            entries = blend(sig, live, catalog, rules, seg, req, now)
            FALLBACKS.labels("recommendations", "no_model").inc()
            return Outcome(entries, "popular", degraded, model, live.person)
        signals = SparseSignals(trending_label=label)
        signals.model = self._model_signal(model, rec, live, now)  # type: ignore[arg-type]
        if live.session_items:
            signals.session = similarity(rec, live.session_items[:5])
        if req.context_item:
            signals.context = similarity(rec, [req.context_item])
        if live.cart:
            signals.cart = similarity(rec, live.cart[:5])
        signals.trending, signals.trending_extra = self._sparse(model, trend)  # type: ignore[arg-type]
        if not popular:  # the store has nothing (or is down): the model's own popularity
            popular = _model_popularity(rec)
        signals.popular, signals.popular_extra = self._sparse(model, popular)  # type: ignore[arg-type]
        arrays = self._catalog_arrays(model, catalog)  # type: ignore[arg-type]
        entries = blend_sparse(rec, arrays, signals, live, catalog, rules, seg, req, now, self.candidates)
        if signals.has_model:
            source = "personalized"
        elif signals.has_similarity:
            source = "session"
        else:
            source = "popular"
            FALLBACKS.labels("recommendations", "cold_start").inc()
        return Outcome(entries, source, degraded, model, live.person)

    def _catalog_arrays(self, model: LoadedModel[ServingRecommender], catalog: dict[str, CatalogEntry]
                        ) -> CatalogArrays:
        """The catalog snapshot through the model's index. A reloaded snapshot comes with them (built in the
        background before it was published) and an upsert patches them; only a new model, or a snapshot from before
        it, builds them here (a few milliseconds, once)."""
        held = self._arrays.get((id(catalog), model.version))
        if held is not None and held[0] is catalog:
            return held[1]
        arrays = CatalogArrays.build(model.model, catalog)
        self._keep_arrays(catalog, model.version, arrays)
        return arrays

    def _keep_arrays(self, catalog: dict[str, CatalogEntry], version: str, arrays: CatalogArrays) -> None:
        self._arrays[(id(catalog), version)] = (catalog, arrays)
        while len(self._arrays) > 4:
            self._arrays.popitem(last=False)

    async def _prepare_arrays(self, catalog: dict[str, CatalogEntry]) -> None:
        """A reloaded catalog's arrays for the current model, before requests see the catalog (CatalogSnapshot)."""
        model = self.recommender()
        if model is not None:
            self._keep_arrays(catalog, model.version, await CatalogArrays.build_async(model.model, catalog))

    def _patch_arrays(self, old: dict[str, CatalogEntry], new: dict[str, CatalogEntry],
                      changed: dict[str, CatalogEntry]) -> None:
        """An upsert through this process: the arrays of the snapshot it replaces, patched (CatalogSnapshot.note)."""
        model = self.recommender()
        held = self._arrays.get((id(old), model.version)) if model is not None else None
        if model is not None and held is not None and held[0] is old:
            self._keep_arrays(new, model.version, held[1].patched(model.model, changed))

    def _sparse(self, model: LoadedModel[ServingRecommender], scores: dict[str, float]
                ) -> tuple[Sparse | None, dict[str, float]]:
        """A popularity snapshot as model items and values, cached per snapshot and model version (an empty one is
        always the same objects: the empty answers of PopularSnapshots are new dicts)."""
        if not scores:
            return None, _NO_EXTRA
        key = (id(scores), model.version)
        hit = self._sparse_cache.get(key)
        if hit is None or hit[0] is not scores:
            if len(self._sparse_cache) > 256:
                self._sparse_cache.clear()
            vec, extra = sparse(model.model, scores)
            hit = self._sparse_cache[key] = (scores, vec, extra)
        return hit[1], hit[2]

    def _model_signal(self, model: LoadedModel[ServingRecommender], rec: ServingRecommender, live: LiveView,
                      now: float) -> Sparse | None:
        """The bundle's candidates while they are current; live re-rank scores once the customer has bought since
        the bundle was made (or is unknown to it but has a history), computed in the background."""
        pre = self._precomputed_signal(model, rec, live.person)
        if not live.known or (pre is not None and live.orders <= pre[1]):
            return pre[0] if pre is not None else None
        if pre is None and not live.orders and not live.category_affinity:
            return None
        cached = self.live_scores.get(model, live.person, live.orders)
        if cached is not None:
            return cached
        self.live_scores.schedule(model, live.person, live.orders, self._store, now)
        FALLBACKS.labels("recommendations", "live_scoring_pending").inc()
        return pre[0] if pre is not None else None

    def _precomputed_signal(self, model: LoadedModel[ServingRecommender], rec: ServingRecommender, person: str
                            ) -> tuple[Sparse, float] | None:
        """precomputed_sparse, kept per customer the bundle knows (a few hundred bytes each: views of its arrays)."""
        key = (model.version, person)
        hit = self._precomputed.get(key)
        if hit is not None:
            self._precomputed.move_to_end(key)
            return hit
        pre = precomputed_sparse(rec, person)
        if pre is not None:
            self._precomputed[key] = pre
            while len(self._precomputed) > PRECOMPUTED_CACHE:
                self._precomputed.popitem(last=False)
        return pre

    def _answer(self, customer_id: str, req: Request, out: Outcome) -> RecommendationsAnswer:
        decision_id = new_decision_id()
        items = self.catalog.items
        recs = [Recommendation(e.item_id, e.score, e.reasons, (c := items.get(e.item_id)) and c.title or None)
                for e in out.entries]
        model = out.model
        self.decisions.log(DecisionRecord(
            decision_id=decision_id, ts=self.clock(), surface="recommendations", channel=req.channel,
            person_id=out.person, customer_id=customer_id, model=model.label if model else None, policy=out.source,
            degraded=out.degraded, entries=_json.encode([{"id": e.item_id, "score": e.score} for e in out.entries]).decode(),
            context=_json.encode({"k": req.k, "context_item": req.context_item, "category": req.category}).decode(),
        ))
        return RecommendationsAnswer(
            customer_id=customer_id, channel=req.channel, decision_id=decision_id,
            model=model.family if model else None, model_version=model.version if model else None,
            degraded=out.degraded, source=out.source, items=recs,
        )

    async def similar(self, item_id: str, channel: str, k: int) -> SimilarAnswer | None:
        """Items like `item_id` by the champion's neighbours; same-category popular items for an item the model does
        not know; None when neither the model nor the catalog knows the item.

        Degraded like recommendations: an item the model knows needs no store read (its neighbours come from the model,
        availability from the catalog snapshot). Otherwise, when a read the answer needs fails or overruns the store's
        timeout, the answer comes from what is in hand and says `degraded: true`: an item that must be looked up in
        the store gets the most popular items (the last snapshot, else the model's own popularity), since its category
        cannot be known; a same-category answer without a popularity snapshot uses the model's popularity."""
        self.catalog.maybe_refresh()
        model = self.recommender()
        rec = model.model if model is not None else None
        rules = self.rules.for_channel(channel)
        catalog = self.catalog.items
        degraded = False
        entries: list[Recommendation] = []
        if rec is not None and item_id in rec.item_index:
            policy = "neighbours"
            for other, s in rec.similar(item_id, 4 * k):
                entry = catalog.get(other)
                if rules.exclude_unavailable and entry is not None and not entry.available:
                    continue
                entries.append(Recommendation(other, round(s, 6), [f"similar_to:{item_id}"], _title(catalog, other)))
                if len(entries) >= k:
                    break
        else:
            me = catalog.get(item_id)
            if me is None:
                try:
                    found = await self._store().get_items([item_id])
                except StoreUnavailable:
                    degraded = True
                else:
                    if item_id not in found:
                        return None
                    it = found[item_id]
                    me = CatalogEntry(it.available, tuple(it.categories), it.title)
            if me is None:  # the store is down and only it could say what the item is
                policy = "popular"
                entries = self._popular_entries(item_id, rec, rules.exclude_unavailable, k)
            else:
                FALLBACKS.labels("similar", "no_model" if rec is None else "unknown_to_model").inc()
                policy = "category"
                try:
                    pop = self.popular.cached("all", "pop") if degraded else await self.popular.read("all", "pop")
                except StoreUnavailable:
                    pop, degraded = {}, True
                entries = self._same_category(item_id, me, rules.exclude_unavailable, k, pop or _model_popularity(rec))
        if degraded:
            DEGRADED.labels("similar").inc()
            FALLBACKS.labels("similar", "degraded").inc()
        decision_id = new_decision_id()
        self.decisions.log(DecisionRecord(
            decision_id=decision_id, ts=self.clock(), surface="similar", channel=channel, person_id="",
            model=model.label if model else None, policy=policy, degraded=degraded,
            entries=_json.encode([{"id": e.item_id, "score": e.score} for e in entries]).decode(),
            context=_json.encode({"item_id": item_id, "k": k}).decode(),
        ))
        return SimilarAnswer(item_id=item_id, channel=channel, decision_id=decision_id,
                             model=model.family if model else None, model_version=model.version if model else None,
                             degraded=degraded, items=entries)

    def _same_category(self, item_id: str, me: CatalogEntry, exclude_unavailable: bool, k: int,
                       pop: Mapping[str, float]) -> list[Recommendation]:
        cats = set(me.categories[-1:]) or set(me.categories)
        if not cats:
            return []
        catalog = self.catalog.items
        out: list[tuple[float, str, str]] = []
        for other, entry in catalog.items():
            if other == item_id or (exclude_unavailable and not entry.available):
                continue
            shared = cats & set(entry.categories)
            if shared:
                out.append((pop.get(other, 0.0), other, sorted(shared)[0]))
        out.sort(key=lambda t: (-t[0], t[1]))
        best = out[0][0] if out and out[0][0] > 0 else 1.0
        return [Recommendation(other, round(s / best, 6), [f"same_category:{token(cat)}"], _title(catalog, other))
                for s, other, cat in out[:k]]

    def _popular_entries(self, item_id: str, rec: ServingRecommender | None, exclude_unavailable: bool, k: int
                         ) -> list[Recommendation]:
        """The most popular items without asking the store: the last snapshot, else the model's popularity."""
        pop = self.popular.cached("all", "pop") or _model_popularity(rec)
        catalog = self.catalog.items
        out: list[Recommendation] = []
        for other, score in sorted(pop.items(), key=lambda t: (-t[1], t[0])):
            entry = catalog.get(other)
            if other == item_id or (exclude_unavailable and entry is not None and not entry.available):
                continue
            out.append(Recommendation(other, round(score, 6), ["popular"], _title(catalog, other)))
            if len(out) >= k:
                break
        return out


def _model_popularity(rec: ServingRecommender | None) -> dict[str, float]:
    """The champion's own popularity head (`ServingRecommender.popular_head`); never written to."""
    return rec.popular_head if rec is not None else {}


def _title(items: Mapping[str, CatalogEntry], item_id: str) -> str | None:
    entry = items.get(item_id)
    return entry.title or None if entry is not None else None
