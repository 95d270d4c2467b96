"""Customer routes: the live profile (by any linked id) and erasure for privacy requests."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get
from litestar.params import PathParameter

from features.schema import ID_PATTERN, Profile
from recsvc.errors import NotFound
from recsvc.lifespan import StoreDep

CustomerId = Annotated[
    str, PathParameter(pattern=ID_PATTERN, max_length=128, description="customer id or a linked anonymous/device/email id")
]


class Erased(msgspec.Struct):
    customer_id: str
    erased: bool


class CustomersController(Controller):
    path = "/v1/customers"
    tags = ["customers"]
    security = [{"apiKey": []}]

    @get("/{customer_id:str}/profile", opt={"scope": "recs:read"}, summary="Live features of one customer")
    async def profile(self, customer_id: CustomerId, store: StoreDep) -> Profile:
        profile = await store.profile(customer_id)
        if profile is None:
            raise NotFound(f"nothing is known about {customer_id!r}", "customer_id")
        return profile

    @delete("/{customer_id:str}", status_code=200, opt={"scope": "admin"}, summary="Erase a customer (privacy)")
    async def erase(self, customer_id: CustomerId, store: StoreDep) -> Erased:
        """Deletes the live profile and every linked id; the id is kept on the erased list that training honours."""
        return Erased(customer_id=customer_id, erased=await store.erase(customer_id))
