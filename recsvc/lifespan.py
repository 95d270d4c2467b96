"""What the service holds for its lifetime: the feature store. Opened at start, always closed in `finally`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from litestar import Litestar

from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.store import FeatureStore
from recsvc.settings import Settings

log = logging.getLogger("recsvc.lifespan")


@dataclass
class Services:
    """Typed holder of the long-lived dependencies; handlers get them through `Provide`, never app.state."""

    settings: Settings
    store: FeatureStore | None = None
    owns_store: bool = field(default=True)

    def get_store(self) -> FeatureStore:
        assert self.store is not None, "the lifespan has not opened the store"
        return self.store


def open_store(settings: Settings) -> FeatureStore:
    if settings.redis_url:
        log.info("feature store: redis (prefix %s, pool %d)", settings.redis_prefix, settings.redis_max_connections)
        return RedisFeatureStore.from_url(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_connections=settings.redis_max_connections,
            timeout_s=settings.redis_timeout_s,
        )
    log.warning(
        "feature store: EMBEDDED in-process store (RECSVC_REDIS_URL is not set): data is not shared between "
        "workers or processes and is lost on restart; set RECSVC_REDIS_URL for anything but a local demo"
    )
    return MemoryFeatureStore()


def lifespan(services: Services):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def manage(_: Litestar) -> AsyncIterator[None]:
        if services.store is None:
            services.store = open_store(services.settings)
            services.owns_store = True
        try:
            yield
        finally:
            if services.owns_store and services.store is not None:
                await services.store.close()
                services.store = None

    return manage
