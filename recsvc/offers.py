"""Next-best-offer decisions: eligibility, propensity, arbitration and exploration. Plain values in, plain values out.

The same functions answer the live endpoint, the bulk export and the offline evaluation; nothing here does I/O.

1. Screen: the offers of the channel a customer may get now (consent, validity, segment, country, churn and value
   ranges, items owned or not, accepted elsewhere, cool-down after a dismiss, the offer's own limit), then the
   contact caps: how many offers the customer may still get on this channel.
2. Propensity per eligible offer: the learned model where its feature spec knows the offer (its `offer.type` is a
   category the survey model was trained on; its `offer.id` one the offer-log model has enough outcomes of), else a
   prior from the customer's affinity to the offer's items and categories and the segment's rate; then a Beta
   posterior over the outcomes logged for (offer, segment), with the estimate above as its mean worth
   `prior_strength` impressions: p = (n0 q + accepts) / (n0 + impressions). For a model trained on the offer log,
   only the outcomes it has not learned from count (those after its training data), and its estimate is worth
   `model_strength` impressions.
3. Arbitration: score = p x value x lever, best first. With probability `exploration` the ranking is one Thompson
   draw (each offer's Beta posterior sampled, times value x lever) instead. Each entry carries the probability that
   the policy put that offer at that rank: (1 - e) [greedy put it there] + e P(Thompson puts it there), the
   latter exact over the DrawBank's `draws` draws, of which the decision's own draw is one.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np

from features.offer_store import (
    UNKNOWN_SEGMENT,
    CapCheck,
    Contact,
    CustomerRecord,
    LedgerState,
    OfferCheck,
    Posteriors,
    ReadSpec,
    clean_segment,
)
from features.offers import Offer, Range
from features.propensity_model import PropensityModel, numeric_safe, offer_inputs
from recsvc.offer_policy import TOTAL, Cap, OfferPolicy, consent_value

DAY = 86400.0
P_MIN, P_MAX = 1e-4, 1 - 1e-4

# Why an offer was left out (the first rule that removed it), in the order the rules are checked; consent and cap
# carry the channel or purpose (consent:email, cap:total).
RULES = ("channel", "consent", "inactive", "not_started", "ended", "segment", "segment_excluded", "country",
         "country_excluded", "churn_risk", "cltv_90d", "owns_any", "owns_none", "accepted", "cooldown", "offer_limit",
         "cap", "rank")


# ---- the catalog, compiled once per version ----


@dataclass(frozen=True, slots=True)
class CatalogOffer:
    offer: Offer
    offer_id: str
    position: int  # in Catalog.offers
    value: float
    lever: float
    starts: float | None
    ends: float | None
    segments: frozenset[str]
    exclude_segments: frozenset[str]
    countries: frozenset[str]
    exclude_countries: frozenset[str]
    churn: Range | None
    cltv: Range | None
    owns_any: tuple[str, ...]
    owns_none: tuple[str, ...]
    consent: tuple[str, ...]
    limit: tuple[int, float] | None  # (count, window seconds)
    cooldown_s: float
    items: tuple[str, ...]
    categories: tuple[str, ...]
    attrs: dict[str, Any]  # offer.id, offer.value, offer.<name> -> value: the offer's model inputs
    log_attrs: dict[str, Any]  # the offer's own model attributes (features.offers.Offer.model_attributes), logged
    model_ok: bool  # the propensity model's spec knows this offer
    dynamic: bool  # has rules on a customer's own values (churn risk, value, items owned)
    reserve_check: OfferCheck | None = None  # what the reservation re-checks (check()), built once per catalog

    @property
    def weight(self) -> float:
        return self.value * self.lever

    def check(self) -> OfferCheck:
        if self.reserve_check is not None:
            return self.reserve_check
        limit, window = self.limit or (0, 0.0)
        return OfferCheck(self.offer_id, limit, window, self.cooldown_s)


@dataclass(frozen=True)
class Catalog:
    version: int
    offers: tuple[CatalogOffer, ...]  # by offer id
    by_channel: dict[str, tuple[CatalogOffer, ...]]
    need: ReadSpec  # what to read per customer: affinities of the offers' items and categories, rule items owned
    keep_s: float  # how much ledger history the caps and limits look at
    model: PropensityModel | None
    model_label: str | None
    index: dict[str, CatalogOffer] = field(default_factory=dict)  # by offer id
    purposes: tuple[str, ...] = ()  # consent purposes offers require beyond their channel's
    bounded: tuple[CatalogOffer, ...] = ()  # offers with a validity window
    # (channel, segment, country, consents, validity) -> what passes the shared rules: see _static
    static: dict[tuple[Any, ...], _Static] = field(default_factory=dict)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # value x lever by position
    model_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # by position
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))  # offer id by position
    model_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    item_offers: dict[str, list[int]] = field(default_factory=dict)  # item -> positions of offers naming it
    category_offers: dict[str, list[int]] = field(default_factory=dict)
    # the same as arrays: items and categories numbered (item_keys, then category_keys), and for key j the offer
    # positions positions[starts[j]: starts[j] + counts[j]] (estimate() fans affinities out to offers with them)
    item_keys: dict[str, int] = field(default_factory=dict)
    category_keys: dict[str, int] = field(default_factory=dict)
    touches: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)))
    # outcomes the model has learned from, per segment (row) and offer position: the posterior counts only the rest
    seen: tuple[dict[str, int], np.ndarray, np.ndarray] | None = None  # None: the model was not trained on them

    def unseen(self, segments: Sequence[str], sizes: Sequence[int], offer_pos: np.ndarray, imp: np.ndarray,
               acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, accepts) of a batch less those the model was trained on (offers it scores only)."""
        if self.seen is None:
            return imp, acc
        rows_of, seen_imp, seen_acc = self.seen
        none = len(rows_of)  # the all-zero row
        seg_rows = np.repeat([rows_of.get(s, none) for s in segments], sizes)
        left = np.maximum(imp - seen_imp[seg_rows, offer_pos], 0.0)
        return left, np.clip(acc - seen_acc[seg_rows, offer_pos], 0.0, left)


def model_applies(model: PropensityModel, attrs: Mapping[str, Any]) -> bool:
    """Does the learned model know this offer (features.propensity_model.PropensityModel.knows)?"""
    return model.knows(attrs)


def _seen_table(compiled: Sequence[CatalogOffer], model: PropensityModel | None,
                ) -> tuple[dict[str, int], np.ndarray, np.ndarray] | None:
    if model is None or not model.seen:
        return None
    cells = [(c.position, seg, n, a) for c in compiled if c.model_ok
             for seg, (n, a) in model.seen.get(c.offer_id, {}).items()]
    rows_of = {seg: r for r, seg in enumerate(sorted({seg for _, seg, _, _ in cells}))}
    imp = np.zeros((len(rows_of) + 1, len(compiled)))
    acc = np.zeros_like(imp)
    for pos, seg, n, a in cells:
        imp[rows_of[seg], pos], acc[rows_of[seg], pos] = n, a
    return rows_of, imp, acc


def compile_catalog(offers: Mapping[str, Offer], version: int, policy: OfferPolicy, model: PropensityModel | None,
                    model_label: str | None) -> Catalog:
    compiled = []
    for position, oid in enumerate(sorted(offers)):
        o = offers[oid]
        e = o.eligibility
        own = o.model_attributes()
        attrs = offer_inputs(oid, float(o.value), own)
        limit = (o.limit.count, o.limit.days * DAY) if o.limit else None
        cooldown_s = (o.cooldown_days if o.cooldown_days is not None else policy.default_cooldown_days) * DAY
        compiled.append(CatalogOffer(
            offer=o, offer_id=oid, position=position, value=float(o.value), lever=float(o.lever), starts=o.starts, ends=o.ends,
            segments=frozenset(e.segments), exclude_segments=frozenset(e.exclude_segments),
            countries=frozenset(e.countries), exclude_countries=frozenset(e.exclude_countries),
            churn=e.churn_risk, cltv=e.cltv_90d, owns_any=tuple(e.owns_any), owns_none=tuple(e.owns_none),
            consent=tuple(e.consent), limit=limit, cooldown_s=cooldown_s,
            items=tuple(o.items), categories=tuple(o.categories), attrs=attrs, log_attrs=own,
            model_ok=model is not None and model.knows(attrs),
            dynamic=bool(e.churn_risk or e.cltv_90d or e.owns_any or e.owns_none),
            reserve_check=OfferCheck(oid, *(limit or (0, 0.0)), cooldown_s),
        ))
    by_channel: dict[str, list[CatalogOffer]] = {}
    for c in compiled:
        for ch in c.offer.channels:
            by_channel.setdefault(ch, []).append(c)
    need = ReadSpec(items=tuple(sorted({i for c in compiled for i in c.items})),
                    categories=tuple(sorted({x for c in compiled for x in c.categories})),
                    owned=tuple(sorted({i for c in compiled for i in (*c.owns_any, *c.owns_none)})))
    keep = max([policy.max_cap_window_s, DAY] + [c.limit[1] for c in compiled if c.limit])
    item_offers, category_offers = _inverted(compiled, "items"), _inverted(compiled, "categories")
    return Catalog(version, tuple(compiled), {k: tuple(v) for k, v in by_channel.items()}, need, keep,
                   model, model_label, {c.offer_id: c for c in compiled},
                   tuple(sorted({p for c in compiled for p in c.consent})),
                   tuple(c for c in compiled if c.starts is not None or c.ends is not None),
                   weights=np.array([c.value * c.lever for c in compiled], dtype=np.float64),
                   model_ok=np.array([c.model_ok for c in compiled], dtype=bool),
                   ids=np.array([c.offer_id for c in compiled] or [""], dtype=object)[: len(compiled)],
                   model_positions=np.array([c.position for c in compiled if c.model_ok], dtype=np.int64),
                   item_offers=item_offers, category_offers=category_offers,
                   item_keys={x: j for j, x in enumerate(item_offers)},
                   category_keys={x: j for j, x in enumerate(category_offers, len(item_offers))},
                   touches=_touches([*item_offers.values(), *category_offers.values()]),
                   seen=_seen_table(compiled, model))


def _touches(groups: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, counts, positions): group j is positions[starts[j]: starts[j] + counts[j]]."""
    counts = np.array([len(g) for g in groups], dtype=np.intp)
    starts = np.cumsum(counts) - counts
    return starts, counts, np.array([p for g in groups for p in g], dtype=np.intp)


def _inverted(compiled: Sequence[CatalogOffer], attr: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c in compiled:
        for x in getattr(c, attr):
            out.setdefault(x, []).append(c.position)
    return out


# ---- what outcomes say so far ----


@dataclass(frozen=True)
class Evidence:
    """Acceptance counts per (offer, segment) and each segment's rate (its configured rate, moved by its outcomes
    pooled over the catalog)."""

    counts: Posteriors
    segment_rates: dict[str, float]
    base_rate: float
    by_segment: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # segment -> offer -> (n, a)
    _tables: dict[int, tuple[dict[str, int], np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for offer_id, cells in self.counts.items():
            for seg, c in cells.items():
                self.by_segment.setdefault(seg, {})[offer_id] = (c[0], min(c[1], c[0]))

    def arrays(self, catalog: Catalog, segments: Sequence[str], sizes: Sequence[int],
               offer_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, accepts) for a batch: customer i's segment with each of its offers (by position)."""
        if not self.by_segment:
            return np.zeros(len(offer_pos)), np.zeros(len(offer_pos))
        table = self._tables.get(catalog.version)
        if table is None:
            names = sorted(self.by_segment)
            imp = np.zeros((len(names) + 1, len(catalog.offers)))
            acc = np.zeros_like(imp)
            for r, seg in enumerate(names):
                for oid, (n, a) in self.by_segment[seg].items():
                    c = catalog.index.get(oid)
                    if c is not None:
                        imp[r, c.position], acc[r, c.position] = n, a
            table = self._tables[catalog.version] = ({s: r for r, s in enumerate(names)}, imp, acc)
        rows_of, imp, acc = table
        none = len(rows_of)  # the all-zero row: a segment without outcomes
        seg_rows = np.repeat([rows_of.get(s, none) for s in segments], sizes)
        return imp[seg_rows, offer_pos], acc[seg_rows, offer_pos]

    def segment_rate(self, segment: str) -> float:
        return self.segment_rates.get(segment, self.base_rate)


def build_evidence(counts: Posteriors, policy: OfferPolicy) -> Evidence:
    pr = policy.prior
    pooled: dict[str, list[int]] = {}
    for cells in counts.values():
        for seg, (i, a, _d) in cells.items():
            p = pooled.setdefault(seg, [0, 0])
            p[0] += i
            p[1] += min(a, i)
    rates = {}
    for seg in set(pooled) | set(pr.segments):
        rate = pr.segments.get(seg, pr.base_rate)
        n, a = pooled.get(seg, (0, 0))
        s = pr.segment_strength
        rates[seg] = (s * rate + a) / (s + n) if s + n > 0 else rate
    return Evidence(counts, rates, pr.base_rate)


# ---- decisions ----


@dataclass(frozen=True, slots=True)
class CapUse:
    key: str
    max: int
    window_days: float
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.max - self.used)


class Excluded(msgspec.Struct, gc=False):
    offer_id: str
    rule: str
    detail: str = ""


class Entry(msgspec.Struct, gc=False):
    offer_id: str
    rank: int
    score: float  # propensity x value x lever (the greedy score, whichever policy ranked it)
    propensity: float
    source: str  # prior | model, "+posterior" once outcomes for (offer, segment) exist
    prior: float  # the estimate before outcomes (affinity prior or model)
    value: float
    lever: float
    p: float  # probability that the policy put this offer at this rank
    impressions: int
    accepts: int
    reasons: list[str]


class Screened(msgspec.Struct, gc=False):
    """A customer after eligibility and caps, before propensities. (The per-customer records of a batch are
    msgspec Structs without garbage-collector tracking: thousands live at once in an export, none in a cycle.)"""

    customer: CustomerRecord
    customer_id: str
    channel: str
    k: int  # offers the caps still allow (<= the k asked for)
    segment: str
    eligible: Sequence[CatalogOffer]  # shared with the catalog's cache: never modified
    excluded: Sequence[Excluded]  # () unless explain
    caps: Sequence[CapUse]
    reasons: list[str]  # why nothing or less than k can be offered
    explain: bool = False
    positions: Sequence[int] = ()  # the eligible offers' catalog positions
    base: dict[str, Any] = {}  # model inputs of the customer and context (logged)
    q: np.ndarray | None = None  # prior estimates, per eligible offer


class Decision(msgspec.Struct, gc=False):
    customer_id: str
    person_id: str
    channel: str
    segment: str
    entries: list[Entry]
    excluded: list[Excluded]
    candidates: tuple[list[str], list[float]]  # offers eligible within caps and their greedy scores, best first
    policy: str  # greedy | thompson | none
    model: str | None
    reasons: list[str]
    caps: Sequence[CapUse]
    ledger_version: int
    attributes: dict[str, Any] | None = None  # the customer and context model inputs, when offers were made

    def contacts(self, decision_id: str, ts: float) -> list[Contact]:
        return [Contact(ts, decision_id, e.offer_id, self.channel, self.segment) for e in self.entries]


def _in(x: str | None, allowed: frozenset[str]) -> bool:
    return x is not None and x in allowed


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


STATIC_CACHE = 10_000  # (channel, segment, country, consents, validity) combinations kept per catalog


class _Static(NamedTuple):
    """The offers of a channel after the rules many customers share, in catalog order."""

    passing: tuple[CatalogOffer, ...]
    failing: list[tuple[str, str]]  # (offer, rule) for the others
    positions: tuple[int, ...]  # of passing, in the catalog
    dynamic: tuple[tuple[int, CatalogOffer], ...]  # (index in passing, offer) of those with rules on the customer's
    where: dict[str, int]  # offer id -> index in passing


def _static(catalog: Catalog, channel: str, segment: str, country: str | None, traits: Mapping[str, str],
            invalid: frozenset[str], policy: OfferPolicy) -> _Static:
    """The offers of a channel that pass the rules shared by many customers (active, validity, consent purposes,
    segment, country), and (offer, rule) for the others, in catalog order; cached per combination."""
    consents = tuple(consent_value(traits, p, policy) for p in catalog.purposes) if catalog.purposes else ()
    key = (channel, segment, country, consents, invalid)
    hit = catalog.static.get(key)
    if hit is not None:
        return hit
    granted = {p for p, ok in zip(catalog.purposes, consents) if ok}
    passing: list[CatalogOffer] = []
    failing: list[tuple[str, str]] = []
    for c in catalog.by_channel.get(channel, ()):
        rule = ""
        if not c.offer.active:
            rule = "inactive"
        elif c.offer_id in invalid:
            rule = "validity"  # not_started or ended: screen() says which
        else:
            missing = next((p for p in c.consent if p not in granted), None)
            if missing is not None:
                rule = f"consent:{missing}"
            elif c.segments and segment not in c.segments:
                rule = "segment"
            elif segment in c.exclude_segments:
                rule = "segment_excluded"
            elif c.countries and not _in(country, c.countries):
                rule = "country"
            elif _in(country, c.exclude_countries):
                rule = "country_excluded"
        if rule:
            failing.append((c.offer_id, rule))
        else:
            passing.append(c)
    if len(catalog.static) >= STATIC_CACHE:
        catalog.static.clear()
    hit = catalog.static[key] = _Static(tuple(passing), failing, tuple(c.position for c in passing),
                                        tuple((i, c) for i, c in enumerate(passing) if c.dynamic),
                                        {c.offer_id: i for i, c in enumerate(passing)})
    return hit


def _own_rule(c: CatalogOffer, churn: float | None, cltv: float | None, owned: Mapping[str, float]) -> str:
    """The first of the rules on the customer's own values that removes the offer ("" when none does)."""
    if c.churn is not None and (churn is None or not c.churn.contains(churn)):
        return "churn_risk"
    if c.cltv is not None and (cltv is None or not c.cltv.contains(cltv)):
        return "cltv_90d"
    if c.owns_any:
        for i in c.owns_any:
            if i in owned:
                break
        else:
            return "owns_any"
    if c.owns_none and owned:
        for i in c.owns_none:
            if i in owned:
                return "owns_none"
    return ""


def _eligible(static: _Static, catalog: Catalog, churn: float | None, cltv: float | None,
              owned: Mapping[str, float], ledger: LedgerState, now: float,
              ) -> tuple[Sequence[CatalogOffer], Sequence[int]]:
    """The offers of `static.passing` (and their positions) that no rule of the customer's own (ranges, items owned)
    or of the ledger (accepted, cool-down, offer limit) removes: the set screen() keeps with explain, without naming
    the rules. The ledger is walked instead of the offers (most ledgers are empty); the remaining runs of the
    shared tuples are sliced, not rebuilt offer by offer."""
    drop = {i for i, c in static.dynamic if _own_rule(c, churn, cltv, owned)}
    where = static.where
    if ledger.accepted:
        drop.update(where[oid] for oid in ledger.accepted if oid in where)
    index = catalog.index
    for oid, ts in ledger.dismissed.items():
        c = index.get(oid)
        if c is not None and now - ts < c.cooldown_s and oid in where:
            drop.add(where[oid])
    if ledger.contacts:
        used: dict[str, int] = {}
        for x in ledger.contacts:
            c = index.get(x.offer_id)
            if c is not None and c.limit is not None and x.ts > now - c.limit[1]:
                used[x.offer_id] = used.get(x.offer_id, 0) + 1
        for oid, n in used.items():
            limit = index[oid].limit
            if limit is not None and n >= limit[0] and oid in where:
                drop.add(where[oid])
    if not drop:
        return static.passing, static.positions
    passing, positions = static.passing, static.positions
    kept: list[tuple[CatalogOffer, ...]] = []
    kept_at: list[tuple[int, ...]] = []
    start = 0
    for i in sorted(drop):
        kept.append(passing[start:i])
        kept_at.append(positions[start:i])
        start = i + 1
    kept.append(passing[start:])
    kept_at.append(positions[start:])
    return tuple(itertools.chain.from_iterable(kept)), tuple(itertools.chain.from_iterable(kept_at))


def invalid_now(catalog: Catalog, now: float) -> tuple[frozenset[str], dict[str, str]]:
    """Offers outside their validity window at `now`, and which side (not_started / ended)."""
    side = {}
    for c in catalog.bounded:
        if c.starts is not None and now < c.starts:
            side[c.offer_id] = "not_started"
        elif c.ends is not None and now >= c.ends:
            side[c.offer_id] = "ended"
    return frozenset(side), side


def screen(catalog: Catalog, customer: CustomerRecord, customer_id: str, channel: str, k: int, now: float,
           policy: OfferPolicy, explain: bool = False,
           validity: tuple[frozenset[str], dict[str, str]] | None = None,
           caps_config: tuple[Cap, ...] | None = None) -> Screened:
    """Eligibility and caps for one customer on one channel. `explain`: also list offers of other channels and
    the details of each exclusion. `validity`: invalid_now(catalog, now), and `caps_config`: policy.caps_for(channel),
    when the caller screens a batch."""
    prof = customer.profile
    traits = prof.traits if prof is not None else {}
    segment = clean_segment(traits.get("segment"))
    country = prof.country if prof is not None else None
    ledger = customer.ledger
    owned = customer.owned
    accepted, dismissed, contacts = ledger.accepted, ledger.dismissed, ledger.contacts
    excluded: list[Excluded] = []  # only ?explain=true lists them
    reasons: list[str] = []
    if explain:
        excluded += [Excluded(c.offer_id, "channel", f"not offered on {channel}")
                     for c in catalog.offers if channel not in c.offer.channels]
    caps = _caps(policy.caps_for(channel) if caps_config is None else caps_config, ledger, now) if policy.caps \
        else []
    if not consent_value(traits, channel, policy):
        reasons.append(f"consent:{channel}")
        if explain:
            excluded += [Excluded(c.offer_id, f"consent:{channel}", "no consent for the channel")
                         for c in catalog.by_channel.get(channel, ())]
        return Screened(customer, customer_id, channel, 0, segment, (), excluded if explain else (), caps, reasons,
                        explain=explain)
    invalid, side = validity if validity is not None else invalid_now(catalog, now)
    static = _static(catalog, channel, segment, country, traits, invalid, policy)
    passing, failing = static.passing, static.failing
    churn = _float(traits.get("churn_risk")) if static.dynamic or explain else None
    cltv = _float(traits.get("cltv_90d")) if static.dynamic or explain else None
    eligible: Sequence[CatalogOffer]
    positions: Sequence[int]
    if not explain:  # the bulk path: which offers remain, not why the others do not
        eligible, positions = _eligible(static, catalog, churn, cltv, owned, ledger, now)
    else:  # only ?explain=true lists what was left out, rule by rule
        for oid, rule in failing:
            if rule == "validity":
                rule = side[oid]
            excluded.append(Excluded(oid, rule, _detail(rule, catalog.index[oid], segment, country, churn, cltv,
                                                        owned, ledger, now)))
        kept: list[CatalogOffer] = []
        for c in passing:
            rule = _own_rule(c, churn, cltv, owned) if c.dynamic else ""
            if rule:
                pass
            elif c.offer_id in accepted:
                rule = "accepted"
            elif c.offer_id in dismissed and now - dismissed[c.offer_id] < c.cooldown_s:
                rule = "cooldown"
            elif c.limit is not None and contacts:
                count, window = c.limit
                if sum(1 for x in contacts if x.offer_id == c.offer_id and x.ts > now - window) >= count:
                    rule = "offer_limit"
            if not rule:
                kept.append(c)
            else:
                excluded.append(Excluded(c.offer_id, rule, _detail(rule, c, segment, country, churn, cltv, owned,
                                                                   ledger, now)))
        eligible, positions = kept, [c.position for c in kept]
    allowed = min([k] + [c.remaining for c in caps]) if caps else k
    if not eligible:
        reasons.append("no_eligible_offer")
    elif allowed == 0:
        full = next(c for c in caps if c.remaining == 0)
        reasons.append(f"cap:{full.key}")
        if explain:
            excluded += [Excluded(c.offer_id, f"cap:{full.key}",
                                  f"{full.used} of {full.max} in {full.window_days:g} days") for c in eligible]
        eligible, positions = (), ()
    elif allowed < k:
        full = min(caps, key=lambda c: c.remaining)
        reasons.append(f"cap:{full.key}")
    return Screened(customer, customer_id, channel, min(allowed, len(eligible)), segment, eligible,
                    excluded if explain else (), caps, reasons, explain=explain, positions=positions)


def _detail(rule: str, c: CatalogOffer, segment: str, country: str | None, churn: float | None, cltv: float | None,
            owned: Mapping[str, float], ledger: LedgerState, now: float) -> str:
    """Why the rule removed the offer, for ?explain=true."""
    if rule.startswith("segment"):
        return f"segment {segment!r}"
    if rule.startswith("country"):
        return f"country {country!r}"
    if rule == "churn_risk":
        return f"churn_risk {churn}"
    if rule == "cltv_90d":
        return f"cltv_90d {cltv}"
    if rule == "owns_none":
        return "owns " + next(i for i in c.owns_none if i in owned)
    if rule == "owns_any":
        return "owns none of " + ", ".join(c.owns_any[:5])
    if rule == "accepted":
        return "accepted before: suppressed on every channel"
    if rule == "cooldown":
        return f"dismissed {(now - ledger.dismissed[c.offer_id]) / DAY:.1f} days ago"
    if rule == "offer_limit" and c.limit is not None:
        count, window = c.limit
        return f"{count} of {count} in {window / DAY:g} days"
    if rule == "not_started" or rule == "ended":
        return f"valid {c.offer.valid_from} .. {c.offer.valid_until}"
    return ""


def _caps(config: tuple[Cap, ...], ledger: LedgerState, now: float) -> Sequence[CapUse]:
    """The caps of a channel (policy.caps_for) with their use on this ledger (a shared tuple when unused)."""
    contacts = ledger.contacts
    if not contacts:
        return _unused(config)
    return [CapUse(cap.key, cap.max, cap.window_s / DAY,
                   sum(1 for c in contacts if c.ts > now - cap.window_s and cap.key in (TOTAL, c.channel)))
            for cap in config]


@functools.lru_cache(maxsize=256)
def _unused(config: tuple[Cap, ...]) -> tuple[CapUse, ...]:
    return tuple(CapUse(cap.key, cap.max, cap.window_s / DAY, 0) for cap in config)


def cap_checks(policy: OfferPolicy, channel: str) -> list[CapCheck]:
    """The caps the reservation script re-checks for a channel (shared, read-only)."""
    return _cap_checks(policy.caps_for(channel))


@functools.lru_cache(maxsize=256)
def _cap_checks(caps: tuple[Any, ...]) -> list[CapCheck]:
    return [CapCheck(c.key, c.max, c.window_s) for c in caps]


def moment_attributes(channel: str, now: float, context: Mapping[str, Any]) -> dict[str, Any]:
    """Model inputs of the moment, shared by a batch: context.channel, context.hour, context.weekday,
    context.<name> of the request."""
    base: dict[str, Any] = {"context.channel": channel, "context.hour": math.floor((now % DAY) / 3600.0),
                            "context.weekday": int((now // DAY + 3) % 7)}
    for k, v in context.items():
        base[f"context.{k}"] = v
    return base


def customer_attributes(s: Screened, now: float, context: Mapping[str, Any],
                        moment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Model inputs of the customer and the moment: customer.<trait>, live behaviour, context.<name>. `moment`:
    moment_attributes(...) when the caller builds many (a decision batch shares one)."""
    prof = s.customer.profile
    base = dict(moment if moment is not None else moment_attributes(s.channel, now, context))
    base["customer.segment"] = s.segment
    if prof is not None:
        base.update({"customer." + k: v for k, v in prof.traits.items() if not k.startswith("consent_")})
        base["customer.country"] = prof.country
        base["customer.orders"] = prof.orders
        base["customer.monetary"] = prof.monetary
        base["customer.events"] = sum(v for k, v in prof.counts.items() if k.startswith("type:"))
        if prof.last_seen is not None:
            base["customer.days_since_seen"] = max(0.0, (now - prof.last_seen) / DAY)
    return base


def _numeric_safe(model: PropensityModel, row: dict[str, Any]) -> dict[str, Any]:
    """Drop values the spec would refuse as numbers (a trait "50plus" where the model wants an age)."""
    return numeric_safe(model.spec, row)


def estimate(batch: Sequence[Screened], catalog: Catalog, evidence: Evidence, policy: OfferPolicy, now: float,
             context: Mapping[str, Any]) -> None:
    """Fill each screened customer's prior estimate q per eligible offer: the model where its spec knows the offer
    (one model call for the whole batch), else the affinity prior m + (max_affinity_rate - m) a, with m the
    segment's rate and a in [0, 1] the strongest of 1 - exp(-affinity / scale) over the offer's items and
    category_weight times that over its categories. Posteriors are applied after (see `decide`)."""
    pr = policy.prior
    scale, cw, top_rate = pr.affinity_scale, pr.category_weight, pr.max_affinity_rate
    model = catalog.model
    live = [s for s in batch if s.eligible]
    for s in batch:
        if not s.eligible:
            s.q = np.zeros(0)
    if not live:
        return
    moment = moment_attributes(live[0].channel, now, context)
    for s in live:  # what the model sees of the customer and the moment, whether a model scores or not: logged
        s.base = customer_attributes(s, now, context, moment)
    n_offers = len(catalog.offers)
    a = np.zeros((len(live), n_offers))  # affinity signal per customer and catalog offer
    at_b: list[int] = []  # (customer, item or category, signal) of every affinity that touches an offer
    at_key: list[int] = []
    at_x: list[float] = []
    item_keys, category_keys = catalog.item_keys, catalog.category_keys
    for b, s in enumerate(live):
        prof = s.customer.profile
        if prof is None:
            continue
        for item, v in prof.item_affinity:
            j = item_keys.get(item)
            if j is not None and v > 0:
                at_b.append(b)
                at_key.append(j)
                at_x.append(1.0 - math.exp(-v / scale))
        for cat, v in prof.category_affinity:
            j = category_keys.get(cat)
            if j is not None and v > 0:
                at_b.append(b)
                at_key.append(j)
                at_x.append(cw * (1.0 - math.exp(-v / scale)))
    if at_x:  # each signal to every offer its item or category touches (catalog.touches), the strongest kept
        keys = np.array(at_key, dtype=np.intp)
        starts, counts, positions = catalog.touches
        n = counts[keys]
        first = np.cumsum(n) - n
        at = np.repeat(starts[keys] - first, n) + np.arange(int(n.sum()))
        np.maximum.at(a, (np.repeat(np.array(at_b, dtype=np.intp), n), positions[at]), np.repeat(np.array(at_x), n))
    sizes = [len(s.eligible) for s in live]
    pos_all = np.fromiter(itertools.chain.from_iterable(s.positions for s in live), dtype=np.intp, count=sum(sizes))
    cust = np.repeat(np.arange(len(live)), sizes)
    m = np.array([evidence.segment_rate(s.segment) for s in live])[cust]
    q = m + np.maximum(0.0, top_rate - m) * a[cust, pos_all]
    if model is not None and catalog.model_positions.size:
        use = catalog.model_ok[pos_all]
        if use.any():
            rows = []
            safe: dict[int, dict[str, Any]] = {}
            for j in np.nonzero(use)[0].tolist():
                b = int(cust[j])
                base = safe.get(b)
                if base is None:
                    base = safe[b] = _numeric_safe(model, dict(live[b].base))
                rows.append({**base, **catalog.offers[pos_all[j]].attrs})
            q[use] = np.clip(model.predict_proba(rows), P_MIN, P_MAX)
    start = 0
    for s, size in zip(live, sizes):
        s.q = q[start: start + size]
        start += size


def affinity_reason(s: Screened, c: CatalogOffer, policy: OfferPolicy) -> str | None:
    """The strongest affinity behind an offer's prior: "item:<id>" or "category:<name>" (for reason codes)."""
    prof = s.customer.profile
    if prof is None or c.model_ok or not (prof.item_affinity or prof.category_affinity):
        return None
    best_v, best = 0.0, None
    for i, v in prof.item_affinity:
        if v > best_v and i in c.items:
            best_v, best = v, "item:" + i
    cw = policy.prior.category_weight
    for x, v in prof.category_affinity:
        if v * cw > best_v and x in c.categories:
            best_v, best = v * cw, "category:" + x
    return best


RANK_BUDGET = 4 << 20  # bytes of draws x value x lever ranked at once by DrawBank.rank_many
RANK_MANY_MIN = 8  # customers in a batch from which rankings are computed together (fewer: one by one, cheaper)
LOGIT_STEP = 0.05  # Thompson draws are shared between estimates this close on the log-odds scale
LEVELS = 1 << 10  # log-odds levels kept (+-25.6 at LOGIT_STEP)
MAX_COUNT = (1 << 20) - 1  # counts above this are scaled down for sampling (the posterior is a point by then)


class DrawBank:
    """Thompson draws kept per (offer, posterior): Beta(n0 q + accepts, n0 (1 - q) + declines), q rounded to
    LOGIT_STEP on the log-odds scale. An exploring decision ranks by one of the bank's `draws` columns chosen
    uniformly at random, so the logged probability of each pick is an exact frequency over the bank: not an
    estimate, and never p = 0 for a pick that happened. Sampling once per posterior instead of once per decision is
    what makes exploration affordable in bulk (a Beta draw costs ~70 ns). Keys are packed into one integer (offer
    position 14 bits, level 10, impressions 20, accepts 20). The bank belongs to one catalog version; full, it is
    emptied and refilled."""

    def __init__(self, draws: int, capacity: int = 20_000) -> None:
        self.draws = draws
        self.capacity = capacity
        self.version: int | None = None
        self.index: dict[int, int] = {}  # packed key -> row
        self.rows = np.empty((0, draws), dtype=np.float32)
        # (rows of a customer's eligible offers as int64 bytes, k) -> (top k per draw, how often each offer is at
        # each rank): customers with the same posteriors share the ranking of the draws
        self.rankings: dict[tuple[bytes, int], tuple[np.ndarray, list[list[float]]]] = {}
        self._buffer = np.empty(0, dtype=np.float32)

    def reset(self, version: int | None = None) -> None:
        self.version = version
        self.index = {}
        self.rankings = {}

    def ranking(self, rows: bytes, weight: np.ndarray, k: int) -> tuple[np.ndarray, list[list[float]]]:
        """For one customer's eligible offers (their rows as int64 bytes, value x lever): the top k offers of every
        draw and the share of draws that put each offer at each rank. A draw times value x lever is a float32
        product (as in rank_many, which fills this cache for a whole batch at once); ties go to the offer listed
        first."""
        key = (rows, k)
        hit = self.rankings.get(key)
        if hit is None:
            at = np.frombuffer(rows, dtype=np.int64)
            top = _top(self.rows[at].T * weight.astype(np.float32), k)
            m, n = top.shape[0], len(at)
            if n <= 0xFFFF:
                top = top.astype(np.uint16)  # the cache holds many
            hit = (top, [(np.bincount(top[:, r], minlength=n) / m).tolist() for r in range(top.shape[1])])
            if len(self.rankings) >= 4 * self.capacity:
                self.rankings.clear()
            self.rankings[key] = hit
        return hit

    def rank_many(self, keys: Sequence[tuple[bytes, int]], weights: Sequence[np.ndarray]) -> None:
        """ranking() of many customers (keys (rows, k), their value x lever), computed together: the same top k per
        draw and shares, vectorized over customers of similar size (a per-customer ranking costs ~70 us, mostly
        numpy call overhead on small arrays). Fills the cache; choose() then finds each customer there."""
        todo: dict[tuple[bytes, int], np.ndarray] = {}
        for key, w in zip(keys, weights):
            if key not in self.rankings and key not in todo and len(key[0]) > 8 and key[1] > 0:
                todo[key] = w
        if not todo:
            return
        if len(self.rankings) + len(todo) >= 4 * self.capacity:
            self.rankings.clear()
        order = sorted(todo, key=lambda key: len(key[0]))
        d = self.draws
        start = 0
        while start < len(order):
            end = start + 1  # customers of similar size, as many as fit RANK_BUDGET
            while end < len(order) and (end + 1 - start) * len(order[end][0]) // 8 * d * 4 <= RANK_BUDGET:
                end += 1
            self._rank_chunk(order[start:end], [todo[key] for key in order[start:end]])
            start = end

    def _rank_chunk(self, keys: list[tuple[bytes, int]], weights: list[np.ndarray]) -> None:
        d, m = self.draws, len(keys)
        sizes = np.array([len(rows) // 8 for rows, _ in keys], dtype=np.intp)
        n = int(sizes.max())
        mask = np.arange(n) < sizes[:, None]
        idx = np.zeros((m, n), dtype=np.int64)  # padding: row 0 with weight -1, below every real value (>= 0)
        idx[mask] = np.frombuffer(b"".join(rows for rows, _ in keys), dtype=np.int64)
        w = np.full((m, n), -1.0, dtype=np.float32)
        w[mask] = np.concatenate(weights)
        values = self._scratch(m * n * d).reshape(m, n, d)
        np.take(self.rows, idx, axis=0, out=values)
        values *= w[:, :, None]
        k_max = max(min(k, len(rows) // 8) for rows, k in keys)
        first = np.arange(n, 0, -1, dtype=np.uint16)[None, :, None]  # n - j: the largest marks the first offer
        tops = np.empty((k_max, m, d), dtype=np.uint16 if n <= 0xFFFF else np.intp)  # the cache holds many
        for r in range(k_max):
            best = values.max(axis=1)
            at = n - ((values == best[:, None, :]) * first).max(axis=1)  # the first offer with the best value
            tops[r] = at
            if r + 1 < k_max:
                np.put_along_axis(values, at[:, None, :], -np.inf, axis=1)
        cells = (np.arange(m) * n)[:, None]
        shares = [np.bincount((cells + tops[r]).ravel(), minlength=m * n).reshape(m, n) / d for r in range(k_max)]
        for b, (rows, k) in enumerate(keys):
            size = len(rows) // 8
            kk = min(k, size)
            self.rankings[(rows, k)] = (tops[:kk, b, :].T, [shares[r][b, :size].tolist() for r in range(kk)])

    def _scratch(self, size: int) -> np.ndarray:
        """A float32 buffer reused by rank_many (a fresh multi-megabyte array would be page-faulted in each time)."""
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=np.float32)
        return self._buffer[:size]

    def lookup(self, offers: np.ndarray, q: np.ndarray, impressions: np.ndarray, accepts: np.ndarray, n0: float,
               rng: np.random.Generator, version: int | None = None) -> np.ndarray:
        """Row numbers (into `rows`) of each (offer position, estimate, impressions, accepts), drawing new ones."""
        if version != self.version or offers.size and int(offers.max()) >= 1 << 14:
            self.reset(version)
        level = np.clip(np.rint(np.log(q / (1.0 - q)) / LOGIT_STEP) + LEVELS // 2, 0, LEVELS - 1).astype(np.int64)
        imp = impressions.astype(np.int64)
        acc = np.minimum(accepts.astype(np.int64), imp)
        big = imp > MAX_COUNT
        if big.any():
            acc[big] = acc[big] * MAX_COUNT // imp[big]
            imp[big] = MAX_COUNT
        packed = (offers.astype(np.int64) << 50) | (level << 40) | (imp << 20) | acc
        inverse = None
        if packed.size > 64:  # a batch repeats few posteriors: look up each distinct key once
            packed, inverse = np.unique(packed, return_inverse=True)
        keys = packed.tolist()
        index = self.index
        rows = [index.get(k, -1) for k in keys]
        if -1 in rows:
            new = list(dict.fromkeys(k for k, r in zip(keys, rows) if r < 0))
            if len(index) + len(new) > self.capacity:
                self.reset(version)
                index = self.index
                new = list(dict.fromkeys(keys))
            used = len(index)
            if used + len(new) > len(self.rows):
                grown = np.empty((min(self.capacity, max(used + len(new), 2 * len(self.rows), 256)), self.draws),
                                 dtype=np.float32)
                grown[:used] = self.rows[:used]
                self.rows = grown
            packed = np.array(new, dtype=np.int64)
            lv = ((packed >> 40) & (LEVELS - 1)).astype(np.float64) - LEVELS // 2
            n = ((packed >> 20) & MAX_COUNT).astype(np.float64)
            a = (packed & MAX_COUNT).astype(np.float64)
            qq = 1.0 / (1.0 + np.exp(-lv * LOGIT_STEP))
            self.rows[used: used + len(new)] = rng.beta(n0 * qq + a, n0 * (1 - qq) + n - a, size=(self.draws, len(new))).T
            for r, k in enumerate(new, used):
                index[k] = r
            rows = [index[k] for k in keys]
        out = np.array(rows, dtype=np.int64)
        return out if inverse is None else out[inverse.ravel()]


class Scored(msgspec.Struct, gc=False):
    """One customer's eligible offers after propensity: arrays aligned with Screened.eligible (views of the whole
    batch's arrays; choose() reads the few it offers)."""

    prior: np.ndarray
    impressions: np.ndarray  # int64
    accepts: np.ndarray  # int64
    propensity: np.ndarray
    score: np.ndarray
    weight: np.ndarray
    rows: bytes | None = None  # the bank rows of the eligible offers' Thompson draws (int64, DrawBank's cache key)
    greedy: np.ndarray | None = None  # indices into the eligible offers, best score first, ties by offer id
    candidates: tuple[list[str], list[float]] | None = None  # offer ids and scores in greedy order


def choose(s: Screened, sc: Scored, catalog: Catalog, policy: OfferPolicy, rng: np.random.Generator,
           bank: DrawBank | None = None) -> Decision:
    """Rank the eligible offers and pick up to s.k: greedy by score, or with probability `exploration` by one
    Thompson draw; log the probability of each pick."""
    n = len(s.eligible)
    ids = [c.offer_id for c in s.eligible] if s.explain or sc.greedy is None or sc.candidates is None else []
    score = sc.score
    k = s.k
    if sc.greedy is None:
        greedy = [j for _, _, j in sorted(zip([-x for x in score.tolist()], ids, range(n)))]  # ties by offer id
    else:
        greedy = (sc.greedy if s.explain or sc.candidates is None else sc.greedy[:k]).tolist()
    e = policy.exploration
    explored = False
    probs = [1.0] * k
    order = greedy[:k]
    if k > 0 and e > 0 and n > 1 and sc.rows is not None and bank is not None:
        top, share = bank.ranking(sc.rows, sc.weight, k)
        explored = bool(rng.random() < e)
        if explored:
            order = top[int(rng.integers(top.shape[0]))].tolist()
        probs = [(1 - e) * (greedy[r] == j) + e * share[r][j] for r, j in enumerate(order)]
    entries = []
    for r, j in enumerate(order):
        c = s.eligible[j]
        impressions, accepts = int(sc.impressions[j]), int(sc.accepts[j])
        seen = impressions > 0
        base = "model" if c.model_ok and catalog.model is not None else "prior"
        src = base + "+posterior" if seen else base
        reasons = [f"propensity:{src}"]
        why = affinity_reason(s, c, policy) if base == "prior" else None
        if why:
            reasons.append(f"affinity:{why}")
        if c.segments:
            reasons.append(f"segment:{s.segment}")
        if seen:
            reasons.append(f"outcomes:{accepts}/{impressions}")
        if c.lever != 1.0:
            reasons.append(f"lever:{c.lever:g}")
        if explored:
            reasons.append("explore:thompson")
        entries.append(Entry(c.offer_id, r, float(score[j]), float(sc.propensity[j]), src, float(sc.prior[j]),
                             c.value, c.lever, float(probs[r]), impressions, accepts, reasons))
    excluded: list[Excluded] = []
    if s.explain:
        chosen = set(order)
        excluded = [*s.excluded, *(Excluded(ids[j], "rank", f"rank {r + 1} by score, {k} offered")
                                   for r, j in enumerate(greedy) if j not in chosen)]
    used_model = catalog.model_label if catalog.model is not None and any(c.model_ok for c in s.eligible) else None
    return Decision(
        customer_id=s.customer_id, person_id=s.customer.person_id, channel=s.channel, segment=s.segment,
        entries=entries, excluded=excluded,
        candidates=(sc.candidates or ([ids[j] for j in greedy], [float(score[j]) for j in greedy])) if k > 0
        else ([], []),
        policy=("thompson" if explored else "greedy") if entries else "none", model=used_model, reasons=s.reasons,
        caps=s.caps, ledger_version=s.customer.ledger.version, attributes=s.base if entries else None,
    )


def _top(ts: np.ndarray, k: int) -> np.ndarray:
    """Per draw (row), the columns of the k best scores, best first (draws x k)."""
    if k == 1:
        return np.argmax(ts, axis=1)[:, None]
    if k <= 4:
        ts = ts.copy()
        rows = np.arange(ts.shape[0])
        out = np.empty((ts.shape[0], k), dtype=np.int64)
        for r in range(min(k, ts.shape[1])):
            out[:, r] = best = np.argmax(ts, axis=1)
            ts[rows, best] = -np.inf
        return out[:, : min(k, ts.shape[1])]
    return np.argsort(-ts, axis=1, kind="stable")[:, :k]


def decide(customers: Sequence[tuple[CustomerRecord, str]], catalog: Catalog, evidence: Evidence, channel: str, k: int,
           now: float, policy: OfferPolicy, rng: np.random.Generator, context: Mapping[str, Any] | None = None,
           explain: bool = False, bank: DrawBank | None = None) -> list[Decision]:
    """Decisions for a batch of (customer record, id asked with) on one channel: screen, estimate, then the
    posteriors and scores of the whole batch at once, and a choice per customer. `bank`: the Thompson draws to
    reuse (the service keeps one); a fresh one otherwise."""
    validity = invalid_now(catalog, now)
    caps_config = policy.caps_for(channel)
    screened = [screen(catalog, c, cid, channel, k, now, policy, explain, validity, caps_config)
                for c, cid in customers]
    estimate(screened, catalog, evidence, policy, now, context or {})
    sized = [s for s in screened if s.eligible]
    scored: dict[int, Scored] = {}
    if sized:
        q = np.clip(np.concatenate([s.q for s in sized]), P_MIN, P_MAX)  # type: ignore[misc]
        sizes = [len(s.eligible) for s in sized]
        offer_pos = np.fromiter(itertools.chain.from_iterable(s.positions for s in sized), dtype=np.int64,
                                count=sum(sizes))
        segments = [s.segment for s in sized]
        imp, acc = evidence.arrays(catalog, segments, sizes, offer_pos)
        w = catalog.weights[offer_pos]
        n0 = policy.prior_strength
        strength: np.ndarray | float = n0
        if catalog.seen is not None:  # a model trained on these outcomes: it weighs more, against later outcomes only
            imp, acc = catalog.unseen(segments, sizes, offer_pos, imp, acc)
            strength = np.where(catalog.model_ok[offer_pos], policy.model_strength, n0)
        p = (strength * q + acc) / (strength + imp)  # the Beta posterior mean: alpha / (alpha + beta)
        score = p * w
        imp_i, acc_i = imp.astype(np.int64), acc.astype(np.int64)
        explore = np.repeat([s.k > 0 and len(s.eligible) > 1 for s in sized], sizes)
        rows = None
        if policy.exploration > 0 and explore.any():
            bank = bank if bank is not None and bank.draws == policy.draws else DrawBank(policy.draws)
            rows = np.full(len(q), -1, dtype=np.int64)
            # the bank draws Beta(n0 q + accepts, n0 (1 - q) + declines); a stronger estimate (the learned model's)
            # enters as n0 pseudo-impressions plus (strength - n0) more at rate q, to the nearest accept
            extra = np.maximum(np.asarray(strength) - n0, 0.0) * np.ones(len(q))
            rows[explore] = bank.lookup(offer_pos[explore], q[explore], (imp + extra)[explore],
                                        (acc + np.rint(extra * q))[explore], n0, rng, catalog.version)
        # greedy order of every customer at once: by customer, best score, then catalog position (= offer id order:
        # each customer's offers are in catalog order and the sort is stable)
        ends = np.cumsum(sizes)
        starts = np.repeat(ends - sizes, sizes)
        order_all = np.lexsort((-score, np.repeat(np.arange(len(sized)), sizes)))
        greedy_all = order_all - starts
        cand_ids = catalog.ids[offer_pos[order_all]].tolist()
        cand_scores = score[order_all].tolist()
        raw = rows.tobytes() if rows is not None else b""
        for s, end, size in zip(sized, ends.tolist(), sizes):
            pos = end - size
            scored[id(s)] = Scored(q[pos:end], imp_i[pos:end], acc_i[pos:end], p[pos:end], score[pos:end],
                                   w[pos:end], raw[8 * pos: 8 * end] if rows is not None and rows[pos] >= 0 else None,
                                   greedy_all[pos:end], (cand_ids[pos:end], cand_scores[pos:end]))
        if rows is not None and bank is not None and len(sized) >= RANK_MANY_MIN:  # every exploring customer's
            # ranking of the draws at once (a live decision's one customer is ranked by choose() on its own)
            ranked = [(sc, s.k) for s in sized if (sc := scored[id(s)]).rows is not None]
            bank.rank_many([(sc.rows, k) for sc, k in ranked], [sc.weight for sc, _ in ranked])  # type: ignore[misc]
    nothing = np.zeros(0)
    empty = Scored(nothing, nothing, nothing, nothing, nothing, nothing)
    return [choose(s, scored.get(id(s), empty), catalog, policy, rng, bank) for s in screened]


__all__ = [
    "RULES",
    "UNKNOWN_SEGMENT",
    "CapUse",
    "Catalog",
    "CatalogOffer",
    "Decision",
    "DrawBank",
    "Entry",
    "Evidence",
    "Excluded",
    "Scored",
    "Screened",
    "build_evidence",
    "cap_checks",
    "choose",
    "compile_catalog",
    "decide",
    "estimate",
    "invalid_now",
    "model_applies",
    "screen",
]
