"""The application factory: settings in, Litestar app out. No connection or setting is made at import time."""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from features.store import FeatureStore
from recsvc.controllers.customers import CustomersController
from recsvc.controllers.ingest import CatalogController, EventsController
from recsvc.controllers.ops import health, ready
from recsvc.errors import EXCEPTION_HANDLERS
from recsvc.lifespan import Services, lifespan
from recsvc.logging import configure_logging
from recsvc.security import KeyRing, scope_guard
from recsvc.settings import Settings

log = logging.getLogger("recsvc.app")


def create_app(settings: Settings, store: FeatureStore | None = None) -> Litestar:
    """Build the service. Pass `store` to use one you own (tests); otherwise the lifespan opens and closes one."""
    configure_logging(settings.log_json)
    keyring = KeyRing.from_config(settings.api_keys, settings.api_keys_file, settings.open_access)
    if settings.open_access:
        log.warning("OPEN ACCESS: RECSVC_OPEN=true, requests without an API key get every scope (local demo only)")
    services = Services(settings=settings, store=store, owns_store=store is None)
    return Litestar(
        route_handlers=[EventsController, CatalogController, CustomersController, health, ready],
        dependencies={"store": Provide(services.get_store, sync_to_thread=False)},
        guards=[scope_guard(keyring)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan(services)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="recsvc", version="0.1.0", path="/schema"),
        debug=False,
    )


def app_from_env() -> Litestar:
    """Entry point for ASGI servers (`uvicorn --factory recsvc.app:app_from_env`)."""
    return create_app(Settings.from_env())
