"""Ingestion and catalog routes: parse, hand to the store, answer. Validation lives in features.schema."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.params import PathParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from features.schema import ID_PATTERN, MAX_ITEMS_PER_UPSERT, Event, IngestResult, Item, decode_events
from recsvc.controllers.encoded import EncodedJson
from recsvc.controllers.openapi import errors, request_body
from recsvc.errors import NotFound
from recsvc.lifespan import OffersDep, RecsDep, StoreDep

ItemId = Annotated[str, PathParameter(pattern=ID_PATTERN, max_length=128, description="catalog item id")]


class UpsertResult(msgspec.Struct):
    upserted: int


class ItemsBody(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]


_items_list = msgspec.json.Decoder(list[Item])
_items_body = msgspec.json.Decoder(ItemsBody)


class EventsController(Controller):
    path = "/v1/events"
    tags = ["events"]
    security = [{"apiKey": []}]

    @post(status_code=HTTP_202_ACCEPTED, opt={"scope": "events:write"},
          summary="Ingest one event or a batch (max 1,000)",
          operation_class=request_body(Event | list[Event], "One event, or a JSON array of at most 1,000 events"),
          responses=errors(400, 413, 422, 503))
    async def ingest(self, request: Request, offers: OffersDep) -> Response[IngestResult]:
        """Body: one event object or a JSON array of them. All-or-nothing validation: one bad event rejects the
        request before anything is stored. Replays (same event_id) are counted as duplicates, not stored again."""
        # One dependency only: Litestar resolves two or more in a task group, which cost a fifth of a small request.
        events = decode_events(await request.body())
        result = await offers.store.ingest(events)
        # offer_* outcomes update contact ledgers and acceptance counts; once per event_id, even when retried
        await offers.record_outcomes(events)
        return EncodedJson(result, HTTP_202_ACCEPTED)


class CatalogController(Controller):
    path = "/v1/catalog/items"
    tags = ["catalog"]
    security = [{"apiKey": []}]

    @put(opt={"scope": "admin"}, summary="Upsert catalog items in bulk",
         operation_class=request_body(list[Item] | ItemsBody, "A JSON array of items, or {\"items\": [...]}; at most "
                                      f"{MAX_ITEMS_PER_UPSERT:,} per request"),
         responses=errors(400, 413, 422, 503))
    async def upsert(self, request: Request, store: StoreDep, recs: RecsDep) -> UpsertResult:
        """Body: a JSON array of items, or {"items": [...]}; at most 10,000 per request. Availability changes apply
        to this worker's next answer at once, to other workers' within RECSVC_CATALOG_REFRESH_S."""
        body = await request.body()
        items = _items_body.decode(body).items if body.lstrip()[:1] == b"{" else _items_list.decode(body)
        if len(items) > MAX_ITEMS_PER_UPSERT:
            raise msgspec.ValidationError(f"items: at most {MAX_ITEMS_PER_UPSERT} per request, got {len(items)}")
        upserted = await store.upsert_items(items)
        recs.catalog.note(items)
        return UpsertResult(upserted=upserted)

    @get("/{item_id:str}", opt={"scope": "recs:read"}, summary="One catalog item", responses=errors(404, 503))
    async def get_item(self, item_id: ItemId, store: StoreDep) -> Item:
        found = await store.get_items([item_id])
        if item_id not in found:
            raise NotFound(f"no catalog item {item_id!r}", "item_id")
        return found[item_id]
