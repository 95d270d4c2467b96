"""Content routes: the content catalog (bulk upsert, one item) and the personalized content of one slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.params import Parameter, PathParameter

from features.content import MAX_CONTENT_PER_UPSERT, Content, ContentBody, check_slots, decode_content
from features.schema import ID_PATTERN, Channel
from recsvc.content import MAX_K
from recsvc.content_service import ContentAnswer, ContentDep
from recsvc.controllers.customers import CustomerId
from recsvc.controllers.openapi import errors, request_body
from recsvc.errors import NotFound

ContentId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128, description="content id")]
# Optional in the signature so that a missing one is a 400 naming it, like an unknown one (checked by the service).
ChannelParam = Annotated[Channel | None, Parameter(description="required: the channel the content is shown on")]
_SLOT_HELP = "required: a configured slot (RECSVC_CONTENT_SLOTS)"
# What type checkers see; each app's route resolves it to the same type listing that app's slots (signature_namespace).
SlotParam = Annotated[str | None, Parameter(description=_SLOT_HELP)]


class ContentUpserted(msgspec.Struct):
    upserted: int


class ContentCatalogController(Controller):
    path = "/v1/catalog/content"
    tags = ["content"]
    security = [{"apiKey": []}]

    @put(opt={"scope": "admin"}, summary=f"Upsert content items in bulk (max {MAX_CONTENT_PER_UPSERT:,})",
         operation_class=request_body(list[Content] | ContentBody, "A JSON array of content items, or "
                                      f"{{\"items\": [...]}}; at most {MAX_CONTENT_PER_UPSERT:,} per request"),
         responses=errors(400, 413, 422, 503))
    async def upsert(self, request: Request, content: ContentDep) -> ContentUpserted:
        """Body: a JSON array of content items, or {"items": [...]}. All-or-nothing validation; every slot must be
        one of the configured slots (RECSVC_CONTENT_SLOTS)."""
        items, path = decode_content(await request.body())
        check_slots(items, content.slots, path)
        return ContentUpserted(upserted=await content.upsert(items))

    @get("/{content_id:str}", opt={"scope": "recs:read"}, summary="One content item", responses=errors(404, 503))
    async def get_content(self, content_id: ContentId, content: ContentDep) -> Content:
        found = await content.get(content_id)
        if found is None:
            raise NotFound(f"no content item {content_id!r}", "content_id")
        return found


def customer_content_controller(slots: Sequence[str]) -> type[Controller]:
    """The personalized-content route of an app whose configured slots are `slots` (the schema lists them)."""
    slot_param: Any = Annotated[str | None, Parameter(description=_SLOT_HELP, schema_extra={"enum": list(slots)})]

    class CustomerContentController(Controller):
        path = "/v1/customers"
        tags = ["content"]
        security = [{"apiKey": []}]
        signature_namespace = {"SlotParam": slot_param}

        @get("/{customer_id:str}/content", opt={"scope": "recs:read"}, summary="Personalized content for one slot")
        async def content_for(
            self,
            customer_id: CustomerId,
            content: ContentDep,
            channel: ChannelParam = None,
            slot: SlotParam = None,
            k: Annotated[int, Parameter(ge=1, le=MAX_K, description=f"how many entries, 1..{MAX_K}")] = 3,
        ) -> ContentAnswer:
            """Eligible: available, scheduled now, offered on the channel and slot, targeted at the customer's segment
            (or untargeted). Ranked by category affinity, segment match and priority; unknown customers get priority
            order. When the feature store does not answer, the cached catalog is ranked as for an unknown customer and
            the answer says `degraded: true` (never a 5xx)."""
            return await content.recommend(customer_id, channel, slot, k)

    return CustomerContentController
