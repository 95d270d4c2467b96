"""Recommendation routes: per-customer recommendations, similar items, and model administration (reload)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import PathParameter, QueryParameter

from features.schema import ID_PATTERN, Channel
from recsvc.errors import NotFound
from recsvc.lifespan import ModelsDep, RecsDep
from recsvc.models import FamilyStatus, RefreshReport
from recsvc.recommend import Request
from recsvc.serving import RecommendationsAnswer, SimilarAnswer

MAX_K = 100
MAX_EXCLUDE = 200
_ID = re.compile(ID_PATTERN)

CustomerId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128,
                                          description="customer id or a linked anonymous/device/email id")]
ItemId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128, description="catalog item id")]
K = Annotated[int, QueryParameter(ge=1, le=MAX_K, description=f"number of items, 1-{MAX_K}")]
ChannelQ = Annotated[Channel, QueryParameter(description="the channel asking: web, app, email, sms, store, call_center, social")]
OptionalId = Annotated[str | None, QueryParameter(pattern=ID_PATTERN, max_length=128)]
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=128)]
Exclude = Annotated[str | None, QueryParameter(max_length=MAX_EXCLUDE * 129,
                                               description=f"comma-separated item ids never to return (at most {MAX_EXCLUDE})")]


def _exclude(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if len(ids) > MAX_EXCLUDE:
        raise msgspec.ValidationError(f"exclude: at most {MAX_EXCLUDE} item ids, got {len(ids)}")
    for v in ids:
        if not _ID.match(v):
            raise msgspec.ValidationError(f"exclude: {v[:40]!r} is not a valid item id "
                                          "(1-128 chars; no whitespace, braces, * ? [ ])")
    return frozenset(ids)


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
        country: Text = None,
    ) -> RecommendationsAnswer:
        """Champion scores blended with the customer's live behaviour (session, cart, context item, category
        affinity) and trending items, filtered and diversified by the channel's rules. Works for anonymous ids;
        unknown customers get trending and popular items (`country` helps when the customer has none yet)."""
        req = Request(channel=channel, k=k, context_item=context_item, exclude=_exclude(exclude), category=category,
                      country=country)
        return await recs.recommend(customer_id, req)

    @get("/items/{item_id:str}/similar", opt={"scope": "recs:read"}, summary="Items similar to one item")
    async def similar(self, item_id: ItemId, recs: RecsDep, channel: ChannelQ = "web", k: K = 10) -> SimilarAnswer:
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
