"""Recommendation routes: per-customer recommendations, similar items, and model administration (reload)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import PathParameter, QueryParameter

from features.schema import COUNTRY_PATTERN, ID_PATTERN, Channel
from recsvc.controllers.encoded import EncodedJson
from recsvc.controllers.openapi import errors
from recsvc.errors import NotFound, RecsvcError
from recsvc.lifespan import ModelsDep, RecsDep
from recsvc.models import FamilyStatus, RefreshReport
from recsvc.recommend import Request as RecsRequest
from recsvc.serving import RecommendationsAnswer, SimilarAnswer

MAX_K = 100
MAX_EXCLUDE = 200
_ID = re.compile(ID_PATTERN)
# A country name or code as events carry it ("GB", "United Kingdom", "Côte d'Ivoire"): letters first, then letters,
# digits, spaces and . , ' ( ) & -; it selects a trending scope in the store, so nothing else gets through.
_COUNTRY = re.compile(COUNTRY_PATTERN)

CustomerId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128,
                                          description="customer id or a linked anonymous/device/email id")]
ItemId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128, description="catalog item id")]
K = Annotated[int, QueryParameter(ge=1, le=MAX_K, description=f"number of items, 1-{MAX_K}")]
ChannelQ = Annotated[Channel, QueryParameter(description="the channel asking: web, app, email, sms, store, call_center, social")]
OptionalId = Annotated[str | None, QueryParameter(pattern=ID_PATTERN, max_length=128)]
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=128)]
Country = Annotated[str | None, QueryParameter(
    description="for visitors the store knows nothing about: trending in this country (a name or code as events "
                "carry it; 1-64 characters: letters first, then letters, digits, spaces and . , ' ( ) & -)",
    schema_extra={"pattern": COUNTRY_PATTERN, "maxLength": 64})]
Exclude = Annotated[str | None, QueryParameter(max_length=MAX_EXCLUDE * 129,
                                               description=f"comma-separated item ids never to return (at most {MAX_EXCLUDE})")]


class BadQuery(RecsvcError):
    """A query parameter outside its allowed values (400, `field` = the parameter)."""

    status_code = 400
    error = "validation"


def _exclude(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if len(ids) > MAX_EXCLUDE:
        raise BadQuery(f"exclude: at most {MAX_EXCLUDE} item ids, got {len(ids)}", "exclude")
    for v in ids:
        if not _ID.match(v):
            raise BadQuery(f"exclude: {v[:40]!r} is not a valid item id (1-128 chars; no whitespace, braces, * ? [ ])",
                           "exclude")
    return frozenset(ids)


def _country(value: str | None) -> str | None:
    if value is None:
        return None
    if not _COUNTRY.fullmatch(value):  # not match: `$` would let a trailing newline through
        raise BadQuery(f"country: {value[:40]!r} is not a country name or code (1-64 characters: letters first, then "
                       "letters, digits, spaces and . , ' ( ) & -)", "country")
    return value


class RecommendationsController(Controller):
    path = "/v1"
    tags = ["recommendations"]
    security = [{"apiKey": []}]

    @get("/customers/{customer_id:str}/recommendations", opt={"scope": "recs:read"},
         summary="Recommendations for one customer on one channel")
    async def recommendations(
        self,
        customer_id: CustomerId,
        recs: RecsDep,
        channel: ChannelQ = "web",
        k: K = 10,
        context_item: OptionalId = None,
        exclude: Exclude = None,
        category: Text = None,
        country: Country = None,
    ) -> Response[RecommendationsAnswer]:
        """Champion scores blended with the customer's live behaviour (session, cart, context item, category
        affinity) and trending items, filtered and diversified by the channel's rules. Works for anonymous ids;
        unknown customers get trending and popular items (`country` helps when the customer has none yet)."""
        req = RecsRequest(channel=channel, k=k, context_item=context_item, exclude=_exclude(exclude),
                          category=category, country=_country(country))
        return EncodedJson(await recs.recommend(customer_id, req))

    @get("/items/{item_id:str}/similar", opt={"scope": "recs:read"}, summary="Items similar to one item",
         responses=errors(404))
    async def similar(self, item_id: ItemId, recs: RecsDep, channel: ChannelQ = "web", k: K = 10) -> SimilarAnswer:
        """The champion's nearest neighbours of the item; for an item the model does not know, the most popular items
        of its catalog category. 404 when neither the model nor the catalog knows it. When the feature store does not
        answer and the item has to be looked up in it, the most popular items, with `degraded: true`."""
        answer = await recs.similar(item_id, channel, k)
        if answer is None:
            raise NotFound(f"no catalog item {item_id!r}", "item_id")
        return answer


class ModelsAnswer(msgspec.Struct):
    models: list[FamilyStatus]
    last_check: float | None
    report: RefreshReport | None = None


class AdminController(Controller):
    path = "/v1/admin/models"
    tags = ["admin"]
    security = [{"apiKey": []}]

    @get(opt={"scope": "admin"}, summary="The champions being served")
    async def status(self, models: ModelsDep) -> ModelsAnswer:
        return ModelsAnswer(models=models.status(), last_check=models.last_check)

    @post("/reload", status_code=200, opt={"scope": "admin"}, summary="Load new champions now")
    async def reload(self, models: ModelsDep) -> ModelsAnswer:
        """Asks MLflow for each family's `champion` and swaps in any that changed, without failing requests in
        flight; MLflow unreachable or a corrupt artifact leaves the last good model serving (see `report.errors`)."""
        report = await models.refresh()
        return ModelsAnswer(models=models.status(), last_check=models.last_check, report=report)
