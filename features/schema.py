"""Wire types shared by every layer: events, catalog items, the live profile and the offline-log row.

All validation of incoming data lives here, so the API, the importers and the tests agree on what is valid.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from features.keys import ALIAS_PREFIXES

SCHEMA_VERSION = 1

EventType = Literal[
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "return",
    "search",
    "email_open",
    "email_click",
    "offer_impression",
    "offer_accept",
    "offer_dismiss",
    "content_impression",
    "content_click",
]
Channel = Literal["web", "app", "email", "sms", "store", "call_center", "social"]

EVENT_TYPES: tuple[str, ...] = get_args(EventType)
CHANNELS: tuple[str, ...] = get_args(Channel)

# Types whose meaning needs the thing they are about.
ITEM_EVENTS = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase", "return"})
OFFER_EVENTS = frozenset({"offer_impression", "offer_accept", "offer_dismiss"})
CONTENT_EVENTS = frozenset({"content_impression", "content_click"})

# Identifiers end up inside Redis keys and hash tags: no braces, glob characters, whitespace or controls.
ID_PATTERN = r"^[^\s{}*?\[\]\x00-\x1f\x7f]{1,128}(?![\s\S])"  # not $: it lets one trailing newline through
Id = Annotated[str, Meta(pattern=ID_PATTERN, description="1-128 chars; no whitespace, braces, * ? [ ]")]
ShortText = Annotated[str, Meta(max_length=128)]
Text = Annotated[str, Meta(max_length=2000)]
Quantity = Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]
Money = Annotated[float, Meta(ge=-1e9, le=1e9)]
PropValue = str | int | float | bool | None

MAX_BATCH = 1000
MAX_FUTURE_SECONDS = 24 * 3600  # clocks drift; a day ahead is a client bug, not drift
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
MAX_PROPERTIES = 50
# "anonymous:abc" is the person id of anonymous visitor abc: a customer of that id would be the same person.
RESERVED_CUSTOMER_ID = (
    "customer_id: must not start with " + ", ".join(f"'{p}'" for p in ALIAS_PREFIXES)
    + " (reserved for the ids of people known only by an anonymous, device or email id)"
)


# A country name or code becomes a Redis scope (`co:<country>`, inside a hash tag): letters first, then letters,
# digits, spaces and . , ' ( ) & -; no braces. The recommendations endpoint's `country` parameter takes the same.
COUNTRY_PATTERN = r"^[^\W\d_][\w .,'()&-]{0,63}(?![\s\S])"
Country = Annotated[str, Meta(pattern=COUNTRY_PATTERN, description="1-64 chars, a letter first; no braces")]


class EventContext(Struct, omit_defaults=True, forbid_unknown_fields=True):
    session_id: Id | None = None
    device: ShortText | None = None
    country: Country | None = None
    campaign: ShortText | None = None
    touchpoint: ShortText | None = None


class Event(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One thing a customer did on one channel. `normalize()` fills event_id and timestamp."""

    type: EventType
    channel: Channel
    event_id: Id | None = None
    customer_id: Id | None = None
    anonymous_id: Id | None = None
    device_id: Id | None = None
    email_hash: Id | None = None
    timestamp: datetime | None = None
    item_id: Id | None = None
    offer_id: Id | None = None
    content_id: Id | None = None
    decision_id: Id | None = None
    quantity: Quantity | None = None
    value: Money | None = None
    context: EventContext | None = None
    properties: dict[ShortText, PropValue] | None = None

    def __post_init__(self) -> None:
        if not (self.customer_id or self.anonymous_id or self.device_id or self.email_hash):
            raise ValueError(
                "customer_id: an event needs at least one identifier "
                "(customer_id, anonymous_id, device_id or email_hash)"
            )
        if self.customer_id is not None and self.customer_id.startswith(ALIAS_PREFIXES):
            raise ValueError(RESERVED_CUSTOMER_ID)
        if self.type in ITEM_EVENTS and not self.item_id:
            raise ValueError(f"item_id: required for type '{self.type}'")
        if self.type in OFFER_EVENTS and not self.offer_id:
            raise ValueError(f"offer_id: required for type '{self.type}'")
        if self.type in CONTENT_EVENTS and not self.content_id:
            raise ValueError(f"content_id: required for type '{self.type}'")
        if self.timestamp is not None:
            ts = self.timestamp
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
                self.timestamp = ts
            epoch = ts.timestamp()
            if epoch > time.time() + MAX_FUTURE_SECONDS:
                raise ValueError("timestamp: more than 24 hours in the future")
            if epoch < MIN_TIMESTAMP:
                raise ValueError("timestamp: before 2000-01-01")
        if self.properties is not None and len(self.properties) > MAX_PROPERTIES:
            raise ValueError(f"properties: at most {MAX_PROPERTIES} keys")

    @property
    def ts(self) -> float:
        """Epoch seconds (UTC); call after normalize()."""
        assert self.timestamp is not None
        return self.timestamp.timestamp()

    @property
    def country(self) -> str | None:
        return self.context.country if self.context else None

    @property
    def session_id(self) -> str | None:
        return self.context.session_id if self.context else None


def normalize(event: Event, now: float | None = None) -> Event:
    """Give an event its server-side defaults: a fresh event_id and the receive time."""
    if event.event_id is None:
        event.event_id = uuid.uuid4().hex
    if event.timestamp is None:
        event.timestamp = datetime.fromtimestamp(now if now is not None else time.time(), tz=timezone.utc)
    return event


class Item(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A catalog item. `categories` are ordered from general to specific."""

    item_id: Id
    title: Text = ""
    categories: Annotated[list[ShortText], Meta(max_length=20)] = []
    price: Annotated[float, Meta(ge=0, le=1e9)] | None = None
    attributes: dict[ShortText, PropValue] = {}
    available: bool = True


MAX_ITEMS_PER_UPSERT = 10_000


class IngestResult(Struct):
    accepted: int
    duplicates: int
    duplicate_ids: list[str] = []


# ---- the live profile, read from the online store in one round trip ----


class RecentEvent(Struct, omit_defaults=True):
    type: str
    channel: str
    ts: float
    item_id: str | None = None
    offer_id: str | None = None
    content_id: str | None = None
    decision_id: str | None = None


class Session(Struct):
    session_id: str
    started: float
    last: float
    items: list[str]  # item ids touched in this session, most recent first


SESSION_ITEMS_SHOWN = 50


def session_items(recent: Sequence[RecentEvent], started: float) -> list[str]:
    """Items touched since the session started, newest first, each once."""
    out: list[str] = []
    for r in recent:
        if r.ts < started:
            break
        if r.item_id and r.item_id not in out:
            out.append(r.item_id)
    return out[: SESSION_ITEMS_SHOWN]



class Profile(Struct, omit_defaults=True):
    """Everything the service knows live about one person (all linked ids merged)."""

    customer_id: str  # the canonical id every linked id resolves to
    linked_ids: list[str] = []
    first_seen: float | None = None
    last_seen: float | None = None
    country: str | None = None
    counts: dict[str, int] = {}  # "type:purchase" -> n, "channel:web" -> n
    last_seen_by_channel: dict[str, float] = {}
    recent: list[RecentEvent] = []  # newest first
    item_affinity: list[tuple[str, float]] = []  # decayed to read time, best first
    category_affinity: list[tuple[str, float]] = []
    purchased: dict[str, float] = {}  # item -> last purchase ts
    returned: dict[str, float] = {}
    cart: dict[str, int] = {}
    session: Session | None = None
    monetary: float = 0.0
    orders: int = 0
    traits: dict[str, str] = {}  # published by offline jobs: segment, cluster, churn_risk, cltv, consent_*


class LiveFeatures(Struct, omit_defaults=True):
    """The slice of a profile a decision needs (recommendations, offers), read in one cheap round trip.

    Agrees with `Profile` for the same person and time: a test checks both adapters against their profile()."""

    person: str  # the canonical id
    country: str | None = None
    orders: int = 0  # purchase events
    events: int = 0  # all events
    traits: dict[str, str] = {}
    purchased: list[str] = []  # every purchased item, most recent first (ties: by id, descending)
    purchased_since: dict[str, float] = {}  # items last purchased at or after `since`, with that time
    returned: list[str] = []
    cart: list[str] = []
    session_items: list[str] = []  # items touched in the open session, most recent first; [] when none is open
    category_affinity: list[tuple[str, float]] = []  # decayed to read time, best first


LIVE_RECENT_SCAN = 20  # recent events scanned for the session's items
LIVE_CATEGORIES = 20


# ---- the offline log row: one flat record per accepted event ----


class LogRecord(Struct, omit_defaults=True, array_like=True):
    """What goes on the Redis Stream and, flattened, into Parquet. array_like keeps the stream entry small."""

    event_id: str
    person_id: str  # canonical id at ingest time
    type: str
    channel: str
    ts: float
    customer_id: str | None = None
    anonymous_id: str | None = None
    device_id: str | None = None
    email_hash: str | None = None
    item_id: str | None = None
    offer_id: str | None = None
    content_id: str | None = None
    decision_id: str | None = None
    quantity: int | None = None
    value: float | None = None
    session_id: str | None = None
    device: str | None = None
    country: str | None = None
    campaign: str | None = None
    touchpoint: str | None = None
    properties: str | None = None  # JSON text
    ingested_at: float = 0.0


LOG_COLUMNS: tuple[str, ...] = LogRecord.__struct_fields__

_json_encoder = msgspec.json.Encoder()


def to_log_record(event: Event, person_id: str, ingested_at: float, ts: float | None = None) -> LogRecord:
    """`ts`: event.ts, when the caller has it already. Positional arguments, in LogRecord's field order (keywords
    cost four times as much on the ingest path; a test checks every field lands where it belongs)."""
    ctx = event.context
    assert event.event_id is not None
    if ctx is None:
        session_id = device = country = campaign = touchpoint = None
    else:
        session_id, device, country, campaign, touchpoint = (
            ctx.session_id, ctx.device, ctx.country, ctx.campaign, ctx.touchpoint
        )
    return LogRecord(
        event.event_id,
        person_id,
        event.type,
        event.channel,
        event.ts if ts is None else ts,
        event.customer_id,
        event.anonymous_id,
        event.device_id,
        event.email_hash,
        event.item_id,
        event.offer_id,
        event.content_id,
        event.decision_id,
        event.quantity,
        event.value,
        session_id,
        device,
        country,
        campaign,
        touchpoint,
        _json_encoder.encode(event.properties).decode() if event.properties else None,
        ingested_at,
    )


_log_decoder = msgspec.msgpack.Decoder(LogRecord)
_log_encoder = msgspec.msgpack.Encoder()


def encode_log_record(rec: LogRecord) -> bytes:
    return _log_encoder.encode(rec)


def decode_log_record(data: bytes) -> LogRecord:
    return _log_decoder.decode(data)


def event_aliases(event: Event) -> list[str]:
    """The anonymous ids on the event (cookie, device, email hash), as `kind:value`."""
    out = []
    if event.anonymous_id:
        out.append("anonymous:" + event.anonymous_id)
    if event.device_id:
        out.append("device:" + event.device_id)
    if event.email_hash:
        out.append("email:" + event.email_hash)
    return out


def event_identifiers(event: Event) -> list[str]:
    """Every id on the event, as `kind:value`, customer first: the candidates identity resolution links."""
    aliases = event_aliases(event)
    return ["customer:" + event.customer_id, *aliases] if event.customer_id else aliases


def decode_events(body: bytes) -> list[Event]:
    """Decode one event or a JSON array of events; raises msgspec.ValidationError/DecodeError naming the field."""
    stripped = body.lstrip()
    if stripped[:1] == b"[":
        events = msgspec.json.decode(body, type=list[Event])
        if len(events) > MAX_BATCH:
            raise msgspec.ValidationError(f"batch: at most {MAX_BATCH} events per request, got {len(events)}")
        return events
    return [msgspec.json.decode(body, type=Event)]


def as_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


class DecisionRecord(Struct, array_like=True):
    """One served answer, logged for attribution, A/B analysis and off-policy evaluation (decision_id joins it to
    the exposure and outcome events that carry the same decision_id). `entries` is JSON: a list of objects with at
    least `id`, `score` and, for offers, `p` (the probability with which the policy chose it)."""

    decision_id: str
    ts: float
    surface: str  # recommendations | similar | content | offers | export
    channel: str
    person_id: str  # canonical person at decision time ("" for item-only surfaces)
    customer_id: str | None = None  # the id the caller asked with
    model: str | None = None  # "<registered model>@<version>", or None for a rule-only answer
    policy: str | None = None  # how the entries were chosen (e.g. "greedy", "explore"), later the A/B variant
    degraded: bool = False
    entries: str = "[]"
    context: str | None = None  # JSON of request parameters (k, slot, context_item ...)


DECISION_COLUMNS: tuple[str, ...] = DecisionRecord.__struct_fields__
_decision_decoder = msgspec.msgpack.Decoder(DecisionRecord)


def encode_decision_record(rec: DecisionRecord) -> bytes:
    return _log_encoder.encode(rec)


def decode_decision_record(data: bytes) -> DecisionRecord:
    return _decision_decoder.decode(data)


_decision_batch_decoder = msgspec.msgpack.Decoder(list[DecisionRecord])


def decode_decision_batch(data: bytes) -> list[DecisionRecord]:
    """A stream entry of kind "D": several decisions written in one XADD."""
    return _decision_batch_decoder.decode(data)


class LinkRecord(Struct, array_like=True):
    """An identity link, logged so training can re-attribute anonymous history: alias -> person."""

    alias: str  # kind:value
    person_id: str
    ts: float


_link_decoder = msgspec.msgpack.Decoder(LinkRecord)


def encode_link_record(rec: LinkRecord) -> bytes:
    return _log_encoder.encode(rec)


def decode_link_record(data: bytes) -> LinkRecord:
    return _link_decoder.decode(data)
