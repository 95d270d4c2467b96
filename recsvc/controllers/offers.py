"""Next-best-offer routes: the offer catalog, the live decision, consent, and the bulk export for email."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import Parameter, PathParameter
from litestar.response import Stream

from features.offers import Offer, decode_offers
from features.schema import CHANNELS, ID_PATTERN, Channel
from recsvc.errors import NotFound, RecsvcError
from recsvc.lifespan import OffersDep
from recsvc.offer_service import MAX_K, ExportRequest, OfferAnswer

CustomerId = Annotated[
    str, PathParameter(pattern=ID_PATTERN, max_length=128, description="customer id or a linked anonymous/device/email id")
]
OfferId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128, description="offer id")]
PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_CONTEXT = 20
_export_request = msgspec.json.Decoder(ExportRequest)
_consent_body = msgspec.json.Decoder(dict[str, Any])


class BadParameter(RecsvcError):
    status_code = 400
    error = "validation"


class Upserted(msgspec.Struct):
    upserted: int


class OfferList(msgspec.Struct):
    version: int
    offers: list[Offer]


class Deleted(msgspec.Struct):
    offer_id: str
    deleted: bool


class Consent(msgspec.Struct):
    customer_id: str
    person_id: str
    consent: dict[str, bool]  # effective: recorded, else the configured default
    recorded: dict[str, str]  # what was recorded (granted | denied)


def parse_context(values: list[str] | None) -> dict[str, Any]:
    """`context=weather:Sunny&context=temperature:80` -> {"weather": "Sunny", "temperature": 80.0}."""
    out: dict[str, Any] = {}
    for v in values or []:
        key, sep, val = v.partition(":")
        if not sep or not PURPOSE.match(key) or len(val) > 128:
            raise BadParameter(f"context: expected name:value (name of a-z, 0-9, _), got {v[:60]!r}", "context")
        try:
            out[key] = float(val)
        except ValueError:
            out[key] = val
    if len(out) > MAX_CONTEXT:
        raise BadParameter(f"context: at most {MAX_CONTEXT} attributes", "context")
    return out


class OfferCatalogController(Controller):
    path = "/v1/catalog/offers"
    tags = ["offers"]
    security = [{"apiKey": []}]

    @put(opt={"scope": "admin"}, summary="Upsert offers (at most 1,000 per request)")
    async def upsert(self, request: Request, offers: OffersDep) -> Upserted:
        """Body: a JSON array of offers or {"offers": [...]}. Validated whole before anything is stored: a
        contradictory rule, an unknown field or channel, a window that ends before it starts, a negative value
        rejects the request with the field named (`$[3].eligibility.exclude_segments`)."""
        body = await request.body()
        at = "$.offers" if body.lstrip()[:1] == b"{" else "$"
        return Upserted(await offers.upsert(decode_offers(body), at))

    @get(opt={"scope": "offers:read"}, summary="The offer catalog")
    async def list_offers(self, offers: OffersDep) -> OfferList:
        version, found = await offers.offers.load_catalog()
        return OfferList(version, [found[k] for k in sorted(found)])

    @get("/{offer_id:str}", opt={"scope": "offers:read"}, summary="One offer")
    async def get_offer(self, offer_id: OfferId, offers: OffersDep) -> Offer:
        _, found = await offers.offers.load_catalog()
        if offer_id not in found:
            raise NotFound(f"no offer {offer_id!r}", "offer_id")
        return found[offer_id]

    @delete("/{offer_id:str}", status_code=200, opt={"scope": "admin"}, summary="Remove an offer from the catalog")
    async def delete_offer(self, offer_id: OfferId, offers: OffersDep) -> Deleted:
        deleted = await offers.offers.delete_offer(offer_id)
        offers.forget_catalog()
        return Deleted(offer_id, deleted)


class CustomerOffersController(Controller):
    path = "/v1/customers"
    tags = ["offers"]
    security = [{"apiKey": []}]

    @get("/{customer_id:str}/offers", opt={"scope": "offers:read"}, summary="Next best offers for one customer")
    async def next_offers(
        self,
        customer_id: CustomerId,
        offers: OffersDep,
        channel: Annotated[Channel | None, Parameter(description="required: the channel the offer is for")] = None,
        k: Annotated[int, Parameter(ge=1, le=MAX_K, description="offers at most")] = 1,
        explain: Annotated[bool, Parameter(description="also list the offers left out and the rule that did")] = False,
        context: Annotated[list[str] | None, Parameter(description="name:value attributes of the moment")] = None,
    ) -> OfferAnswer:
        """Decides, reserves the contact budget and logs the decision in one step. An unknown customer gets a
        cold-start answer; a feature store that does not answer gives `degraded: true` and no offers."""
        if channel is None:
            raise BadParameter("channel: required, one of " + ", ".join(CHANNELS), "channel")
        return await offers.decide(customer_id, channel, k, explain=explain, context=parse_context(context))

    @get("/{customer_id:str}/consent", opt={"scope": "offers:read"}, summary="Consent per channel and purpose")
    async def get_consent(self, customer_id: CustomerId, offers: OffersDep) -> Consent:
        return msgspec.convert(await offers.consent(customer_id), Consent)

    @put("/{customer_id:str}/consent", opt={"scope": "events:write"}, summary="Record consent per channel or purpose")
    async def put_consent(self, customer_id: CustomerId, request: Request, offers: OffersDep) -> Consent:
        """Body: {"email": true, "sms": false, ...}: channels or other purposes (a-z, 0-9, _)."""
        body = _consent_body.decode(await request.body())
        if not body or len(body) > 20:
            raise msgspec.ValidationError("consent: name 1 to 20 purposes, e.g. {\"email\": true} - at `$`")
        for name, granted in body.items():
            if not PURPOSE.match(name):
                raise msgspec.ValidationError(f"not a purpose name (a-z, 0-9, _; at most 40) - at `$.{name[:40]}`")
            if not isinstance(granted, bool):
                raise msgspec.ValidationError(f"expected true or false, got {granted!r:.40} - at `$.{name}`")
        return msgspec.convert(await offers.set_consent(customer_id, body), Consent)


class OfferExportController(Controller):
    path = "/v1/offers/export"
    tags = ["offers"]
    security = [{"apiKey": []}]

    @post(status_code=200, opt={"scope": "offers:read"}, summary="Decide for an audience (NDJSON stream)")
    async def export(self, request: Request, offers: OffersDep) -> Stream:
        """Body: {"channel": "email", "k": 3, "segment": "...", | "customer_ids": [...] | "all_consented": true,
        "cursor": "..."}. One line per customer with its decision_id and a cursor; a re-post with a line's cursor
        continues after that customer, and nobody already decided by this export is charged again."""
        req = _export_request.decode(await request.body())
        cursor = offers.start_export(req)
        return Stream(offers.export(req, cursor), media_type="application/x-ndjson")


ROUTES = [OfferCatalogController, CustomerOffersController, OfferExportController]
