"""What the service holds for its lifetime: the feature store, the champions, the clock and the decision log.
Opened at start, always closed in `finally`.

Handlers receive them through `Provide(...)` dependencies, never through app.state.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from litestar import Litestar
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from features.clock import Clock, wall_clock
from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.store import FeatureStore, StoreUnavailable
from recsvc.decisions import DecisionLogger
from recsvc.models import ChampionSource, ModelRegistry, RefreshReport
from recsvc.offer_policy import OfferPolicy, load_policy
from recsvc.offer_service import OfferService
from recsvc.rules import load_rules
from recsvc.serving import RecommendationService
from recsvc.settings import Settings

log = logging.getLogger("recsvc.lifespan")

# How handlers ask for the store. SkipValidation: the value comes from our own Provide, and Litestar's per-request
# isinstance check against the runtime_checkable Protocol took ~40% of a single-event request.
StoreDep = NamedDependency[SkipValidation[FeatureStore]]
ModelsDep = NamedDependency[SkipValidation[ModelRegistry]]
ClockDep = NamedDependency[SkipValidation[Clock]]
DecisionsDep = NamedDependency[SkipValidation[DecisionLogger]]
OffersDep = NamedDependency[SkipValidation[OfferService]]
RecsDep = NamedDependency[SkipValidation[RecommendationService]]

EMBEDDED_WARNING = (
    "embedded in-process store: data is not shared or persisted (each worker process has its own, and it is "
    "lost on restart); set RECSVC_REDIS_URL for anything but a local demo"
)


@dataclass
class Services:
    """Typed holder of the long-lived dependencies. `owns_store`: the lifespan opened it, so it closes it."""

    settings: Settings
    store: FeatureStore | None = None
    owns_store: bool = True
    models: ModelRegistry | None = None
    clock: Clock = wall_clock
    decisions: DecisionLogger = field(init=False)
    offer_policy: OfferPolicy = field(init=False)  # recsvc/offers.toml or RECSVC_OFFERS_CONFIG; bad file: no start
    offers: OfferService | None = field(init=False, default=None)  # made for the open store on first use
    recs: RecommendationService = field(init=False)

    def __post_init__(self) -> None:
        self.decisions = DecisionLogger(lambda: self.store)
        self.offer_policy = load_policy(self.settings.offers_config)
        if self.models is None:
            self.models = ModelRegistry(champion_source(self.settings), default_builders())
        self.recs = RecommendationService(self.get_store, self.models, load_rules(self.settings.rules_path),
                                          self.clock, self.decisions, self.settings.catalog_refresh_s,
                                          self.settings.popular_refresh_s)

    def get_store(self) -> FeatureStore:
        if self.store is None:  # a request outside the lifespan (app not started, or already shut down)
            raise StoreUnavailable("the feature store is not open")
        return self.store

    def get_models(self) -> ModelRegistry:
        assert self.models is not None
        return self.models

    def get_clock(self) -> Clock:
        return self.clock

    def get_decisions(self) -> DecisionLogger:
        return self.decisions

    def get_offers(self) -> OfferService:
        store = self.get_store()
        if self.offers is None or self.offers.store is not store:
            self.offers = OfferService(store, self.get_models(), self.offer_policy)
        return self.offers

    def get_recs(self) -> RecommendationService:
        return self.recs


def champion_source(settings: Settings) -> ChampionSource | None:
    """Where champions come from, or None when model loading is off (RECSVC_LOAD_MODELS=false)."""
    if not settings.load_models:
        return None
    source = ChampionSource(settings.tracking_uri)
    if settings.model_cache_dir is not None:
        source.cache_dir = Path(settings.model_cache_dir)
    return source


def default_builders() -> dict[str, Callable[..., object]]:
    """How each family's bundle becomes a serving object (numpy only; no training code)."""
    from features.propensity_model import PropensityModel
    from recsvc.models import PROPENSITY, RECOMMENDER, SEGMENTS
    from recsvc.recommend import ServingRecommender, segments_summary

    return {RECOMMENDER: ServingRecommender.from_bundle, PROPENSITY: PropensityModel.from_bundle,
            SEGMENTS: segments_summary}


def open_store(settings: Settings, clock: Clock = wall_clock) -> FeatureStore:
    """The store the settings ask for: Redis when `redis_url` is set, else the embedded in-process store."""
    if settings.redis_url:
        log.info("feature store: redis (prefix %s, pool %d)", settings.redis_prefix, settings.redis_max_connections)
        return RedisFeatureStore.from_url(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_connections=settings.redis_max_connections,
            timeout_s=settings.redis_timeout_s,
            clock=clock,
        )
    log.warning(EMBEDDED_WARNING)
    return MemoryFeatureStore(clock=clock)


def lifespan(services: Services) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open the store unless one was handed in, load the champions, start the decision log and the model poller;
    stop and close everything opened here, whatever happens."""

    @asynccontextmanager
    async def manage(_: Litestar) -> AsyncIterator[None]:
        settings = services.settings
        if services.store is None:
            services.store = open_store(settings, services.clock)
            services.owns_store = True
        models = services.get_models()
        stop = asyncio.Event()
        poller: asyncio.Task[None] | None = None
        first: asyncio.Task[RefreshReport] | None = None
        try:
            if models.source is not None:
                first = asyncio.create_task(models.refresh(), name="model-load")
                try:  # a slow or unreachable MLflow must not keep the service from starting: it loads later
                    report = await asyncio.wait_for(asyncio.shield(first), timeout=settings.model_start_timeout_s)
                    if report.missing:
                        log.warning("no champion yet for %s: those answers use fallbacks until one is promoted",
                                    ", ".join(report.missing))
                except TimeoutError:
                    log.warning("champions not loaded within %.0f s; serving fallbacks while they load",
                                settings.model_start_timeout_s)
                if settings.model_poll_s > 0:
                    poller = asyncio.create_task(models.poll(settings.model_poll_s, stop), name="model-poll")
            services.decisions.start()
            services.recs.catalog.maybe_refresh()
            # everything loaded so far (framework, MLflow client, models) lives as long as the process: keep it out of
            # later garbage collections, whose full passes over it showed as tens of milliseconds in the latency tail
            gc.collect()
            gc.freeze()
            yield
        finally:
            stop.set()
            if first is not None and not first.done():
                first.cancel()
            if poller is not None:
                poller.cancel()
                try:
                    await poller
                except (asyncio.CancelledError, Exception):
                    pass
            await services.decisions.close()
            services.recs.close()
            if services.owns_store and services.store is not None:
                store, services.store = services.store, None
                await store.close()

    return manage
