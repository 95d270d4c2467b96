"""What the service holds for its lifetime: the feature store. Opened at start, always closed in `finally`.

Handlers receive it through `Provide(services.get_store)`, never through app.state.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.store import FeatureStore, StoreUnavailable
from recsvc.settings import Settings

log = logging.getLogger("recsvc.lifespan")

# How handlers ask for the store. SkipValidation: the value comes from our own Provide, and Litestar's per-request
# isinstance check against the runtime_checkable Protocol took ~40% of a single-event request.
StoreDep = NamedDependency[SkipValidation[FeatureStore]]

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

    def get_store(self) -> FeatureStore:
        if self.store is None:  # a request outside the lifespan (app not started, or already shut down)
            raise StoreUnavailable("the feature store is not open")
        return self.store


def open_store(settings: Settings) -> FeatureStore:
    """The store the settings ask for: Redis when `redis_url` is set, else the embedded in-process store."""
    if settings.redis_url:
        log.info("feature store: redis (prefix %s, pool %d)", settings.redis_prefix, settings.redis_max_connections)
        return RedisFeatureStore.from_url(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_connections=settings.redis_max_connections,
            timeout_s=settings.redis_timeout_s,
        )
    log.warning(EMBEDDED_WARNING)
    return MemoryFeatureStore()


def lifespan(services: Services) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open the store unless one was handed in; close what was opened here, whatever happens."""

    @asynccontextmanager
    async def manage(_: Litestar) -> AsyncIterator[None]:
        if services.store is None:
            services.store = open_store(services.settings)
            services.owns_store = True
        try:
            yield
        finally:
            if services.owns_store and services.store is not None:
                store, services.store = services.store, None
                await store.close()

    return manage
