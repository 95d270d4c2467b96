"""The content service: the cached content catalog, the profile read, the ranking call and the decision record.

The whole catalog is kept in process, indexed by (channel, slot). A request never waits for it once it is loaded: when
the snapshot is older than `refresh_s`, one background task reads the catalog's version counter (one GET) and reloads
only when it moved; an upsert through this process reloads at once. So a content request costs the profile read only,
and keeps answering from the last snapshot while the store is down (degraded, as if the customer were unknown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from features.content import Content
from features.content_catalog import ContentCatalog, catalog_for
from features.schema import CHANNELS, DecisionRecord, Profile
from features.store import FeatureStore, StoreUnavailable
from recsvc.content import Candidate, Placement, by_placement, rank
from recsvc.decisions import DecisionLogger, new_decision_id
from recsvc.errors import RecsvcError
from recsvc.metrics import DEGRADED, FALLBACKS
from recsvc.models import SEGMENTS, ModelRegistry

log = logging.getLogger("recsvc.content")

REFRESH_S = 5.0
COLD_RETRY_S = 1.0  # after a failed first load, requests answer degraded this long before one tries again
_CHANNELS = frozenset(CHANNELS)
_json = msgspec.json.Encoder()


class InvalidArgument(RecsvcError):
    """A query parameter outside its allowed values (400, `field` = the parameter)."""

    status_code = 400
    error = "validation"


class ContentEntry(msgspec.Struct, omit_defaults=True):
    content_id: str
    kind: str
    title: str
    score: float
    reasons: list[str]
    url: str | None = None
    image_url: str | None = None


class ContentAnswer(msgspec.Struct):
    customer_id: str
    channel: str
    slot: str
    decision_id: str
    model: str | None  # the segments champion whose published segment targeted this answer; None: rules only
    model_version: str | None
    degraded: bool
    entries: list[ContentEntry]


@dataclass(frozen=True)
class Snapshot:
    version: int
    placements: dict[Placement, tuple[Candidate, ...]] = field(default_factory=dict)
    size: int = 0


EMPTY = Snapshot(version=-1)


class ContentService:
    """One per app. `store` is a getter: the store is opened by the lifespan, after this object is built."""

    def __init__(self, store: Callable[[], FeatureStore], models: Callable[[], ModelRegistry],
                 decisions: Callable[[], DecisionLogger], slots: Sequence[str], refresh_s: float = REFRESH_S) -> None:
        self._store = store
        self._models = models
        self._decisions = decisions
        self.slots = frozenset(slots)
        self.refresh_s = refresh_s
        self._catalog: ContentCatalog | None = None
        self._catalog_of: FeatureStore | None = None
        self._snap: Snapshot | None = None
        self._checked = 0.0
        self._cold_retry_at = 0.0
        self._loads = 0  # loads started; a load that finishes after a later one does not replace its snapshot
        self._installed = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def provide(self) -> "ContentService":
        """The `content` dependency."""
        return self

    # ---- the catalog ----

    def catalog(self) -> ContentCatalog:
        store = self._store()
        if store is not self._catalog_of:  # first use, or the lifespan opened a new store
            self._catalog, self._catalog_of, self._snap = catalog_for(store), store, None
        assert self._catalog is not None
        return self._catalog

    async def upsert(self, items: Sequence[Content]) -> int:
        n = await self.catalog().upsert(items)
        try:
            await self._load()  # this process sees its own write at once
        except StoreUnavailable as exc:
            self._checked = 0.0  # written, not re-read: the next request starts a refresh
            log.warning("content catalog written but not reloaded: %s", exc)
        return n

    async def get(self, content_id: str) -> Content | None:
        return await self.catalog().get(content_id)

    async def _load(self) -> None:
        self._loads += 1
        mine = self._loads
        version, items = await self.catalog().load()
        if mine > self._installed:
            self._snap = Snapshot(version=version, placements=by_placement(items), size=len(items))
            self._installed = mine
        self._checked = time.monotonic()

    async def warm(self) -> None:
        """Load the catalog at start (an on_startup hook), so no request waits for it; a failure is only logged."""
        try:
            await self.snapshot()
        except StoreUnavailable as exc:
            log.warning("content catalog not loaded at start (requests will retry): %s", exc)

    async def snapshot(self) -> Snapshot:
        """The cached catalog; loads it (once, shared by concurrent callers) when there is none yet."""
        catalog = self.catalog()
        snap = self._snap
        if snap is None:
            if time.monotonic() < self._cold_retry_at:  # the store just failed us: do not make every request wait
                raise StoreUnavailable("the content catalog is not loaded yet")
            async with self._lock:
                if self._snap is None:
                    try:
                        await self._load()
                    except StoreUnavailable:
                        self._cold_retry_at = time.monotonic() + COLD_RETRY_S
                        raise
            assert self._snap is not None
            return self._snap
        if time.monotonic() - self._checked >= self.refresh_s and self._task is None:
            self._task = asyncio.create_task(self._check(catalog), name="content-catalog-check")
            self._task.add_done_callback(self._checked_done)
        return snap

    def _checked_done(self, _: asyncio.Task[None]) -> None:
        self._task = None

    async def _check(self, catalog: ContentCatalog) -> None:
        try:
            version = await catalog.version()
            if self._snap is None or version != self._snap.version:
                await self._load()
        except StoreUnavailable as exc:
            log.warning("content catalog not refreshed (serving the cached one): %s", exc)
        finally:
            self._checked = time.monotonic()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def size(self) -> int:
        return self._snap.size if self._snap is not None else 0

    # ---- the decision ----

    def check(self, channel: str | None, slot: str | None) -> None:
        if channel is None:
            raise InvalidArgument("channel: required query parameter", "channel")
        if slot is None:
            raise InvalidArgument("slot: required query parameter", "slot")
        if channel not in _CHANNELS:
            raise InvalidArgument(f"channel: unknown channel {channel!r}; known: {', '.join(CHANNELS)}", "channel")
        if slot not in self.slots:
            raise InvalidArgument(f"slot: unknown slot {slot!r}; configured: {', '.join(sorted(self.slots))}", "slot")

    async def recommend(self, customer_id: str, channel: str | None, slot: str | None, k: int) -> ContentAnswer:
        """Never raises StoreUnavailable: a failed read ranks from the cached catalog as for an unknown customer."""
        self.check(channel, slot)
        assert channel is not None and slot is not None
        store = self._store()
        now = store.clock()  # the store's now: the demo replays 2011 on a replay clock
        degraded = False
        profile: Profile | None = None
        try:
            profile = await store.profile(customer_id, now=now)
        except StoreUnavailable as exc:
            degraded = True
            log.warning("content: profile read failed, answering as for an unknown customer: %s", exc)
        try:
            snap = await self.snapshot()
        except StoreUnavailable as exc:  # never loaded and the store is down: nothing to show, still not a 5xx
            degraded = True
            snap = EMPTY
            log.warning("content: catalog not loaded: %s", exc)
        segment = profile.traits.get("segment") if profile is not None else None
        ranked = rank(snap.placements.get((channel, slot), ()), now=now, segment=segment,
                      affinity=profile.category_affinity if profile is not None else (), k=k)
        seg_model = self._models().get(SEGMENTS) if segment is not None else None
        if degraded:
            DEGRADED.labels("content").inc()
            FALLBACKS.labels("content", "degraded").inc()
        elif profile is None:
            FALLBACKS.labels("content", "cold_start").inc()
        if not ranked:
            FALLBACKS.labels("content", "no_candidates").inc()
        entries = [ContentEntry(content_id=r.candidate.content_id, kind=r.candidate.kind, title=r.candidate.title,
                                score=r.score, reasons=list(r.reasons), url=r.candidate.url,
                                image_url=r.candidate.image_url) for r in ranked]
        answer = ContentAnswer(customer_id=customer_id, channel=channel, slot=slot, decision_id=new_decision_id(),
                               model=seg_model.family if seg_model is not None else None,
                               model_version=seg_model.version if seg_model is not None else None,
                               degraded=degraded, entries=entries)
        self._decisions().log(DecisionRecord(
            decision_id=answer.decision_id, ts=now, surface="content", channel=channel,
            person_id=profile.customer_id if profile is not None else customer_id, customer_id=customer_id,
            model=seg_model.label if seg_model is not None else None, policy="rules", degraded=degraded,
            entries=_json.encode([{"id": e.content_id, "score": e.score, "reasons": e.reasons}
                                  for e in entries]).decode(),
            context=_json.encode({"slot": slot, "k": k}).decode(),
        ))
        return answer


ContentDep = NamedDependency[SkipValidation[ContentService]]
