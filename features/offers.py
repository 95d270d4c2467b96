"""Wire types of the next-best-offer catalog: an offer with its treatment per channel, eligibility rules, validity
window, value, lever, contact limit and cool-down. All offer validation lives here.

An offer that contradicts itself (a segment both required and excluded, a window that ends before it starts, a
range whose min is above its max, an unknown channel or rule field) is rejected with the field named.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from features.schema import CHANNELS, Id, PropValue, ShortText, Text

MAX_OFFERS_PER_UPSERT = 1000
MAX_RULE_VALUES = 200
RESERVED_ATTRIBUTES = frozenset({"id", "value", "category"})  # the model sees these from the offer itself
Url = Annotated[str, Meta(max_length=2000, pattern=r"^(https?://|/)\S*$")]
Days = Annotated[float, Meta(gt=0, le=3650)]


def _utc(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


class Treatment(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """How the offer looks on one channel: an email block, a web or app banner, a push or SMS text."""

    headline: Text | None = None
    body: Text | None = None
    subject: ShortText | None = None  # email subject line
    cta: ShortText | None = None  # call to action label
    url: Url | None = None
    image_url: Url | None = None
    template: ShortText | None = None  # the channel system's template or block id

    def __post_init__(self) -> None:
        if not (self.headline or self.body or self.subject or self.template):
            raise ValueError("headline: a treatment needs at least one of headline, body, subject or template")


class Range(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Inclusive bounds; either may be absent, not both."""

    min: Annotated[float, Meta(ge=-1e12, le=1e12)] | None = None
    max: Annotated[float, Meta(ge=-1e12, le=1e12)] | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("min: a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"max: {self.max} is below min {self.min}")

    def contains(self, x: float) -> bool:
        return (self.min is None or x >= self.min) and (self.max is None or x <= self.max)


RuleList = Annotated[list[ShortText], Meta(max_length=MAX_RULE_VALUES)]
ItemList = Annotated[list[Id], Meta(max_length=MAX_RULE_VALUES)]


class Eligibility(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Who may get the offer. Empty lists mean "no condition". A customer without a trait a rule needs (no
    churn_risk, no segment) does not meet that rule."""

    segments: RuleList = []  # the customer's segment is one of these
    exclude_segments: RuleList = []
    countries: RuleList = []  # the customer's country is one of these
    exclude_countries: RuleList = []
    churn_risk: Range | None = None  # 0..1
    cltv_90d: Range | None = None  # predicted 90-day value
    owns_any: ItemList = []  # has bought at least one of these items
    owns_none: ItemList = []  # has bought none of these items
    consent: RuleList = []  # consent purposes required beyond the channel's own (e.g. "profiling")

    def __post_init__(self) -> None:
        for a, b in (("segments", "exclude_segments"), ("countries", "exclude_countries"), ("owns_any", "owns_none")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                raise ValueError(f"{b}: {both[0]!r} is also in {a} (contradictory rules)")
        if self.churn_risk is not None:
            lo, hi = self.churn_risk.min, self.churn_risk.max
            if (lo is not None and not 0 <= lo <= 1) or (hi is not None and not 0 <= hi <= 1):
                raise ValueError("churn_risk: bounds must lie in 0..1")
        for c in self.consent:
            if not c.replace("_", "").isalnum():
                raise ValueError(f"consent: purpose names are letters, digits and _, got {c!r}")

    @property
    def items(self) -> set[str]:
        return set(self.owns_any) | set(self.owns_none)


class ContactLimit(Struct, forbid_unknown_fields=True):
    """At most `count` contacts with this offer per customer within `days` (all channels together)."""

    count: Annotated[int, Meta(ge=1, le=1000)]
    days: Days


class Offer(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One offer of the catalog. `value` is what an acceptance is worth (revenue or margin, the catalog's choice,
    consistently); `lever` the business's priority weight (1 neutral, 0 switches the offer off in arbitration).
    `attributes` describe the offer to the propensity model (its `type`, `expiration_hours`, ...; the model sees
    them as `offer.<name>`); `items` and `categories` tie it to the catalog for the affinity prior."""

    offer_id: Id
    name: Text
    channels: dict[str, Treatment]  # channel -> treatment; the channels the offer may use
    eligibility: Eligibility = msgspec.field(default_factory=Eligibility)
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    value: Annotated[float, Meta(ge=0, le=1e9)] = 1.0
    lever: Annotated[float, Meta(ge=0, le=1000)] = 1.0
    limit: ContactLimit | None = None
    cooldown_days: Annotated[float, Meta(ge=0, le=3650)] | None = None  # after a dismiss; None: the default
    items: ItemList = []
    categories: RuleList = []
    attributes: Annotated[dict[ShortText, PropValue], Meta(max_length=50)] = {}
    active: bool = True

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels: an offer needs at least one channel")
        unknown = sorted(set(self.channels) - set(CHANNELS))
        if unknown:
            raise ValueError(f"channels: unknown channel {unknown[0]!r}; known: {', '.join(CHANNELS)}")
        self.valid_from, self.valid_until = _utc(self.valid_from), _utc(self.valid_until)
        if self.valid_from is not None and self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until: the validity window ends before (or when) it starts")
        for key in self.attributes:
            if key.startswith("offer.") or not key or "." in key:
                raise ValueError(f"attributes: name attributes without a prefix or dots (the model sees "
                                 f"'offer.<name>'), got {key!r}")
            if key in RESERVED_ATTRIBUTES:
                raise ValueError(f"attributes: {key!r} is reserved (the model sees the offer's own {key} as "
                                 f"'offer.{key}')")

    @property
    def starts(self) -> float | None:
        return self.valid_from.timestamp() if self.valid_from else None

    @property
    def ends(self) -> float | None:
        return self.valid_until.timestamp() if self.valid_until else None

    def model_attributes(self) -> dict[str, Any]:
        """What the propensity model sees of the offer besides its id and value (features.propensity_model.
        offer_inputs): `offer.<name>` per attribute and `offer.category.<name>` = 1 per category. Decisions log it
        with each offer made, so a model trained on the log sees what serving saw."""
        out: dict[str, Any] = {f"offer.category.{c}": 1 for c in self.categories}
        out.update((f"offer.{k}", v) for k, v in self.attributes.items())
        return out


class OffersBody(Struct, forbid_unknown_fields=True):
    offers: list[Offer]


_offer_list = msgspec.json.Decoder(list[Offer])
_offers_body = msgspec.json.Decoder(OffersBody)
_offer_msgpack = msgspec.msgpack.Decoder(Offer)
_msgpack = msgspec.msgpack.Encoder()


def decode_offers(body: bytes) -> list[Offer]:
    """A JSON array of offers or {"offers": [...]}; raises msgspec errors naming the field (`$[2].value`)."""
    wrapped = body.lstrip()[:1] == b"{"
    offers = _offers_body.decode(body).offers if wrapped else _offer_list.decode(body)
    if len(offers) > MAX_OFFERS_PER_UPSERT:
        where = "offers" if wrapped else "batch"
        raise msgspec.ValidationError(f"{where}: at most {MAX_OFFERS_PER_UPSERT} offers per request, got {len(offers)}")
    seen: set[str] = set()
    for i, o in enumerate(offers):
        if o.offer_id in seen:
            at = f"$.offers[{i}]" if wrapped else f"$[{i}]"
            raise msgspec.ValidationError(f"offer_id: {o.offer_id!r} appears twice in the request - at `{at}`")
        seen.add(o.offer_id)
    return offers


def encode_offer(offer: Offer) -> bytes:
    return _msgpack.encode(offer)


def decode_offer(data: bytes) -> Offer:
    return _offer_msgpack.decode(data)

