"""Operational routes: liveness, readiness and the Prometheus scrape.

Readiness: 200 only when the feature store answers and every required champion is loaded. Required: the recommender
champion, when the registry loads models (RECSVC_LOAD_MODELS=true, the default); a service built without model loading
(tests, an ingest-only deployment) requires the store only. The body always lists every family's loaded version.
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec

from recsvc.lifespan import ModelsDep, StoreDep
from recsvc.models import RECOMMENDER, ModelRegistry
from recsvc.telemetry import Scrape


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    store: str | None = None


class Readiness(msgspec.Struct):
    status: str  # ready | unavailable
    store: str  # redis | memory
    store_ok: bool
    models: dict[str, str | None]  # family -> loaded champion version (None: none loaded)
    required: list[str]  # the families that must be loaded for readiness
    missing: list[str]  # what keeps the service from being ready: "store" and/or family names


def required_families(models: ModelRegistry) -> list[str]:
    """The champions readiness waits for: the recommender, when this registry loads models at all."""
    return [RECOMMENDER] if models.source is not None and RECOMMENDER in models.builders else []


@get("/health", tags=["ops"], summary="Alive")
async def health() -> Health:
    return Health(status="ok")


@get("/ready", tags=["ops"], summary="Ready: the feature store answers and the required champions are loaded",
     responses={503: ResponseSpec(Readiness, description="Not ready: `missing` lists the store and/or the families "
                                                         "not loaded", generate_examples=False)})
async def ready(store: StoreDep, models: ModelsDep) -> Response[Readiness]:
    ok = await store.ping()
    versions = models.versions
    required = required_families(models)
    missing = ([] if ok else ["store"]) + [f for f in required if models.get(f) is None]
    body = Readiness(status="unavailable" if missing else "ready", store=store.backend, store_ok=ok,
                     models={f: versions.get(f) for f in models.families}, required=required, missing=missing)
    return Response(body, status_code=503 if missing else 200)


def metrics_route(scrape: Scrape, admin_only: bool) -> HTTPRouteHandler:
    """GET /metrics: open like /health, or behind the `admin` scope when RECSVC_METRICS_ADMIN=true."""

    @get("/metrics", tags=["ops"], summary="Prometheus metrics", opt={"scope": "admin"} if admin_only else {},
         include_in_schema=False)
    async def metrics(request: Request) -> Response[bytes]:
        accept = None
        for name, value in request.scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
                break
        body, content_type = scrape.exposition(accept)
        return Response(body, media_type=content_type)

    return metrics
