"""The personalized-content wire type: banners, articles, email blocks and pushes, with their targeting and schedule.

Validation lives here (like `features.schema`), so the API and any importer agree on what a valid content item is.
Which slots exist is configuration (`recsvc` checks an item's slots against it); everything else is checked here.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from features.schema import Channel, Id, ShortText

ContentKind = Literal["banner", "article", "email_block", "push", "sms", "video", "tile"]
CONTENT_KINDS: tuple[str, ...] = get_args(ContentKind)

# Slot names are configuration (RECSVC_CONTENT_SLOTS); this is their shape and the documented default list.
SLOT_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
SlotName = Annotated[str, Meta(pattern=SLOT_PATTERN, description="a configured slot: lowercase, digits, _")]
DEFAULT_SLOTS: tuple[str, ...] = ("hero", "sidebar", "inline", "footer", "email_block", "push", "sms", "app_home")

# An absolute URI with a scheme (https://..., myapp://...) or a site-relative path (/sale); no whitespace.
URL_PATTERN = r"^([a-zA-Z][a-zA-Z0-9+.\-]*:|/)[^\s]*$"
Url = Annotated[str, Meta(pattern=URL_PATTERN, max_length=2048)]
_SCRIPT_SCHEMES = ("javascript:", "data:", "vbscript:")  # would run in a page that renders the link

MAX_CONTENT_PER_UPSERT = 1000
MAX_BODY_CHARS = 8192


class Content(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One piece of content. Eligible when `available`, scheduled at the time of the request (`start` inclusive,
    `end` exclusive, either open), offered on the channel and slot asked for, and targeted at the customer's segment
    (`segments` empty: everyone). `categories` match the customer's category affinity; `priority` 0..100 is the
    marketer's weight and the whole order for customers without history."""

    content_id: Id
    kind: ContentKind
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    channels: Annotated[list[Channel], Meta(min_length=1, max_length=7)]
    slots: Annotated[list[SlotName], Meta(min_length=1, max_length=20)]
    url: Url | None = None
    image_url: Url | None = None
    summary: Annotated[str, Meta(max_length=500)] = ""
    body: Annotated[str, Meta(max_length=MAX_BODY_CHARS)] = ""
    tags: Annotated[list[ShortText], Meta(max_length=20)] = []
    categories: Annotated[list[ShortText], Meta(max_length=20)] = []
    segments: Annotated[list[ShortText], Meta(max_length=50)] = []
    start: datetime | None = None
    end: datetime | None = None
    priority: Annotated[int, Meta(ge=0, le=100)] = 0
    available: bool = True

    def __post_init__(self) -> None:
        # "field: message" is how the error mapper names the field of a check made here
        for name in ("url", "image_url"):
            value = getattr(self, name)
            if value is not None and value.lower().startswith(_SCRIPT_SCHEMES):
                raise ValueError(f"{name}: javascript:, data: and vbscript: links are not accepted")
        if self.start is not None and self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=timezone.utc)
        if self.end is not None and self.end.tzinfo is None:
            self.end = self.end.replace(tzinfo=timezone.utc)
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end: must be after start")

    @property
    def start_ts(self) -> float:
        return self.start.timestamp() if self.start is not None else float("-inf")

    @property
    def end_ts(self) -> float:
        return self.end.timestamp() if self.end is not None else float("inf")


class ContentBody(Struct, forbid_unknown_fields=True):
    items: list[Content]


_content_list = msgspec.json.Decoder(list[Content])
_content_body = msgspec.json.Decoder(ContentBody)


def decode_content(body: bytes) -> tuple[list[Content], str]:
    """A JSON array of content items or {"items": [...]}: the items and the JSON path of the list (for errors).
    Raises msgspec.ValidationError / DecodeError naming the field; at most MAX_CONTENT_PER_UPSERT items."""
    if body.lstrip()[:1] == b"{":
        items, path = _content_body.decode(body).items, "$.items"
    else:
        items, path = _content_list.decode(body), "$"
    if len(items) > MAX_CONTENT_PER_UPSERT:
        raise msgspec.ValidationError(f"items: at most {MAX_CONTENT_PER_UPSERT} per request, got {len(items)}")
    return items, path


def check_slots(items: list[Content], known: frozenset[str] | set[str], path: str = "$") -> None:
    """Every slot of every item must be configured; the error names the item's `slots` field."""
    for n, item in enumerate(items):
        unknown = sorted(set(item.slots) - known)
        if unknown:
            raise msgspec.ValidationError(
                f"unknown slot(s) {unknown}; configured slots: {sorted(known)} - at `{path}[{n}].slots`"
            )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Content)


def encode_content(item: Content) -> bytes:
    return _encoder.encode(item)


def decode_stored_content(data: bytes) -> Content:
    return _decoder.decode(data)


def parse_slots(text: str) -> tuple[str, ...]:
    """RECSVC_CONTENT_SLOTS: comma-separated slot names; ValueError naming the variable on a bad name."""
    slots = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in slots if not re.match(SLOT_PATTERN, s)]
    if bad or not slots:
        raise ValueError(f"RECSVC_CONTENT_SLOTS: slot names are lowercase letters, digits and _ (at most 32), "
                         f"got {bad or text!r}")
    return slots
