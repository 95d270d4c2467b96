"""Operational routes, open to probes: liveness and readiness."""

from __future__ import annotations

import msgspec
from litestar import Response, get

from recsvc.lifespan import StoreDep



class Health(msgspec.Struct, omit_defaults=True):
    status: str
    store: str | None = None


@get("/health", tags=["ops"], summary="Alive")
async def health() -> Health:
    return Health(status="ok")


@get("/ready", tags=["ops"], summary="Ready: the feature store answers")
async def ready(store: StoreDep) -> Response[Health]:
    ok = await store.ping()
    return Response(Health(status="ready" if ok else "unavailable", store=store.backend), status_code=200 if ok else 503)
