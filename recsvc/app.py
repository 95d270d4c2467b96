"""The application factory: settings in, Litestar app out. No connection or setting is made at import time.

Routes are grouped by resource in `recsvc.controllers`; later resources (recommendations, offers) register here.
"""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from features.store import FeatureStore
from recsvc.controllers.customers import CustomersController
from recsvc.controllers.ingest import CatalogController, EventsController
from recsvc.controllers.ops import health, ready
from recsvc.errors import EXCEPTION_HANDLERS
from recsvc.lifespan import Services, lifespan
from recsvc.logging import configure_logging
from recsvc.security import KeyRing, RateLimiter, scope_guard
from recsvc.settings import Settings

log = logging.getLogger("recsvc.app")


def create_app(settings: Settings, store: FeatureStore | None = None, *, rate_limiter: RateLimiter | None = None) -> Litestar:
    """Build the service. Pass `store` to use one you own (tests, the demo); otherwise the lifespan opens and closes
    one. Raises `security.ConfigError` (refuses to start) when no API key is configured and access is not open."""
    configure_logging(settings.log_json)
    keyring = KeyRing.from_config(settings.api_keys, settings.api_keys_file, settings.open_access)
    if settings.open_access:
        log.warning("OPEN ACCESS: RECSVC_OPEN=true, every request gets every scope without an API key (local demo only)")
    services = Services(settings=settings, store=store, owns_store=store is None)
    return Litestar(
        route_handlers=[EventsController, CatalogController, CustomersController, health, ready],
        dependencies={"store": Provide(services.get_store, sync_to_thread=False)},
        guards=[scope_guard(keyring, rate_limiter)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan(services)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="recsvc",
            version="0.1.0",
            path="/schema",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
        ),
        debug=False,
    )


def app_from_env() -> Litestar:
    """Entry point for ASGI servers (`uvicorn --factory recsvc.app:app_from_env`)."""
    return create_app(Settings.from_env())
