"""The application factory: settings in, Litestar app out. No connection or setting is made at import time.

Routes are grouped by resource in `recsvc.controllers`; later resources (recommendations, offers) register here.
"""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute

from features.clock import Clock
from features.store import FeatureStore
from recsvc.controllers.customers import CustomersController
from recsvc.controllers.ingest import CatalogController, EventsController
from recsvc.content_service import ContentService
from recsvc.controllers.content import ContentCatalogController, customer_content_controller
from recsvc.controllers.openapi import document_common_errors
from recsvc.controllers.ops import health, metrics_route, ready
from recsvc.controllers.recommendations import AdminController, RecommendationsController
from recsvc.controllers.offers import ROUTES as OFFER_ROUTES
from recsvc.errors import EXCEPTION_HANDLERS
from recsvc.lifespan import Services, lifespan
from recsvc.models import ModelRegistry
from recsvc.ratelimit import default_limiter
from recsvc.logging import configure_logging
from recsvc.security import KeyRing, RateLimiter, scope_check
from recsvc.settings import Settings
from recsvc.telemetry import RequestTelemetry, Scrape

log = logging.getLogger("recsvc.app")

# Every route of the service, grouped by resource (plus the content route, made per app for its configured slots).
ROUTES = [EventsController, CatalogController, CustomersController, RecommendationsController, AdminController,
          ContentCatalogController, health, ready]
ROUTES += OFFER_ROUTES


def create_app(
    settings: Settings,
    store: FeatureStore | None = None,
    *,
    models: ModelRegistry | None = None,
    clock: Clock | None = None,
    rate_limiter: RateLimiter | None = None,
) -> Litestar:
    """Build the service. Pass `store` to use one you own (tests, the demo); otherwise the lifespan opens and closes
    one. `models`: a registry you filled yourself (tests); otherwise champions load from MLflow at start. `clock`:
    the service's now (default: the settings' clock). Raises `security.ConfigError` (refuses to start) when no API
    key is configured and access is not open."""
    configure_logging(settings.log_json)
    keyring = KeyRing.from_config(settings.api_keys, settings.api_keys_file, settings.open_access)
    if settings.open_access:
        log.warning("OPEN ACCESS: RECSVC_OPEN=true, every request gets every scope without an API key (local demo only)")
    services = Services(settings=settings, store=store, owns_store=store is None, models=models,
                        clock=clock or (store.clock if store is not None else settings.clock()))
    content = ContentService(services.get_store, services.get_models, services.get_decisions, settings.content_slots,
                             settings.content_refresh_s)
    if rate_limiter is None and not settings.open_access:  # per key, in the store: shared by workers and replicas
        rate_limiter = default_limiter(settings.rate_limit_per_minute, settings.rate_limits, lambda: services.store,
                                       {digest[:12].decode() for digest, _ in keyring.keys})
    scrape = Scrape(services.get_models, services.get_decisions, lambda: content.size)
    app = Litestar(
        route_handlers=[*ROUTES, customer_content_controller(settings.content_slots),
                        metrics_route(scrape, settings.metrics_admin)],
        dependencies={
            "store": Provide(services.get_store, sync_to_thread=False),
            "models": Provide(services.get_models, sync_to_thread=False),
            "clock": Provide(services.get_clock, sync_to_thread=False),
            "decisions": Provide(services.get_decisions, sync_to_thread=False),
            "offers": Provide(services.get_offers, sync_to_thread=False),
            "recs": Provide(services.get_recs, sync_to_thread=False),
            "content": Provide(content.provide, sync_to_thread=False),
        },
        before_request=scope_check(keyring, rate_limiter),  # what a guard does, without its per-request copy
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan(services)],
        on_startup=[content.warm],
        on_shutdown=[content.close],
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
    for route in app.routes:  # /schema: the error answers every route shares (guard, bad parameters)
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                document_common_errors(handler, bool(route.path_parameters))
    # outermost, around routing: every request is timed and gets an X-Request-ID, unmatched ones (404, 405) included
    app.asgi_handler = scrape.requests = RequestTelemetry(app.asgi_handler, settings.slow_request_ms / 1000.0)
    return app


def app_from_env() -> Litestar:
    """Entry point for ASGI servers (`uvicorn --factory recsvc.app:app_from_env`)."""
    return create_app(Settings.from_env())
