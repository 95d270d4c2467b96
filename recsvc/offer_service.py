"""Next-best-offer orchestration: read the customer and their ledger, decide (recsvc.offers), reserve the contact
budget and log the decision in one atomic step, answer. The live endpoint and the bulk export share this path.

Degraded mode: when the feature store does not answer, the answer has no offers (never risk over-contacting) and
says why. A reservation refused because another request changed the same customer's ledger meanwhile is decided
again on the fresh ledger (the reservation script returns it), up to `max_retries` times.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from features.offer_store import (
    CapCheck,
    CustomerRecord,
    LedgerState,
    OfferStore,
    Outcome,
    OutcomeCount,
    Reservation,
    offer_store_for,
)
from features.offers import Offer, Treatment
from features.schema import CHANNELS, OFFER_EVENTS, Channel, DecisionRecord, Event, Id, ShortText
from features.store import FeatureStore, StoreUnavailable
from recsvc.decisions import new_decision_id
from recsvc.errors import RecsvcError
from recsvc.models import PROPENSITY, SEGMENTS, ModelRegistry
from recsvc.offer_policy import OfferPolicy, consent_value
from recsvc.offers import (
    Catalog,
    CapUse,
    Decision,
    DrawBank,
    Evidence,
    build_evidence,
    cap_checks,
    compile_catalog,
    decide,
)

log = logging.getLogger("recsvc.offers")

MAX_K = 20
MAX_EXPORT_IDS = 50_000
RESOLVE_CONCURRENCY = 64
_json = msgspec.json.Encoder()


class CursorError(RecsvcError):
    status_code = 400
    error = "bad_cursor"


class CursorMismatch(RecsvcError):
    status_code = 409
    error = "cursor_mismatch"


# ---- the answer ----


class Outcomes(msgspec.Struct):
    impressions: int
    accepts: int


class OfferOut(msgspec.Struct, gc=False):
    offer_id: str
    name: str
    rank: int
    score: float  # propensity x value x lever
    propensity: float
    propensity_source: str  # prior | model, "+posterior" once outcomes exist for (offer, segment)
    prior_propensity: float  # the estimate before outcomes (affinity prior or model)
    value: float
    lever: float
    p: float  # probability that the policy chose this offer at this rank (logged for off-policy evaluation)
    outcomes: Outcomes
    reasons: list[str]
    treatment: Treatment


class ExcludedOut(msgspec.Struct, omit_defaults=True, gc=False):
    offer_id: str
    rule: str
    detail: str = ""


class CapOut(msgspec.Struct):
    key: str
    max: int
    window_days: float
    used: int
    remaining: int


class OfferAnswer(msgspec.Struct, omit_defaults=True, gc=False):
    # not tracked by the garbage collector (nor are OfferOut, ExcludedOut): an export builds thousands, in no cycle
    customer_id: str
    person_id: str
    channel: str
    decision_id: str
    model: str | None
    degraded: bool
    policy: str  # greedy | thompson | none
    offers: list[OfferOut]
    reasons: list[str]
    caps: list[CapOut]
    degraded_reason: str | None = None
    excluded: list[ExcludedOut] | None = None  # with ?explain=true


# ---- the export request ----


class ExportRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Who gets a decision: exactly one of `segment`, `customer_ids` or `all_consented: true`."""

    channel: Channel
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 1
    segment: ShortText | None = None
    customer_ids: list[Id] | None = None
    all_consented: bool = False
    cursor: str | None = None
    context: dict[str, str | int | float | bool] = {}

    def __post_init__(self) -> None:
        given = [n for n, v in (("segment", self.segment), ("customer_ids", self.customer_ids),
                                ("all_consented", self.all_consented or None)) if v is not None]
        if len(given) != 1:
            raise ValueError("segment: name exactly one audience: segment, customer_ids or all_consented: true"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.customer_ids is not None and len(self.customer_ids) > MAX_EXPORT_IDS:
            raise ValueError(f"customer_ids: at most {MAX_EXPORT_IDS} per export, got {len(self.customer_ids)}")
        if self.segment is not None and not self.segment:
            raise ValueError("segment: must not be empty")
        if len(self.context) > 20:
            raise ValueError("context: at most 20 attributes")


class ExportCursor(msgspec.Struct, array_like=True):
    export_id: str
    fingerprint: str
    after: str | None  # the last person id written (segment and consent audiences)
    position: int  # ids of customer_ids consumed


def encode_cursor(c: ExportCursor) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(c)).decode().rstrip("=")


def decode_cursor(text: str) -> ExportCursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return msgspec.msgpack.decode(raw, type=ExportCursor)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise CursorError("cursor: not a cursor this service wrote", "cursor") from None


def export_fingerprint(req: ExportRequest) -> str:
    audience = {"segment": req.segment, "customer_ids": req.customer_ids, "all_consented": req.all_consented}
    body = _json.encode({"a": audience, "c": req.channel, "k": req.k, "x": req.context})
    return hashlib.sha256(body).hexdigest()[:16]


# ---- the service ----


@dataclass
class _Job:
    """What one batch of decisions shares."""

    catalog: Catalog
    evidence: Evidence
    channel: str
    k: int
    now: float
    context: Mapping[str, Any]
    explain: bool
    export_id: str | None


@dataclass
class _Evidence:
    evidence: Evidence
    catalog_version: int
    read_at: float


class OfferService:
    """Holds the compiled catalog and the acceptance counts (cached, refreshed every `refresh_s`) and the random
    generator. One per feature store."""

    def __init__(self, store: FeatureStore, models: ModelRegistry, policy: OfferPolicy,
                 offers: OfferStore | None = None) -> None:
        self.store = store
        self.offers: OfferStore = offers if offers is not None else offer_store_for(store)
        self.models = models
        self.policy = policy
        self.rng = np.random.default_rng(policy.seed)
        self.bank = DrawBank(policy.draws)  # Thompson draws reused across decisions (see recsvc.offers.DrawBank)
        self._catalog: Catalog | None = None
        self._evidence: _Evidence | None = None
        self._evidence_read: tuple[int, asyncio.Future[Evidence]] | None = None
        self._lock = asyncio.Lock()
        self._caps_memo: tuple[Sequence[CapUse], list[CapOut]] | None = None

    # ---- catalog and evidence ----

    def _model(self) -> tuple[Any, str | None]:
        loaded = self.models.get(PROPENSITY)
        return (loaded.model, loaded.label) if loaded is not None else (None, None)

    async def catalog(self, seen_version: int | None = None) -> Catalog:
        """The compiled catalog; reloaded when the store's version differs from the cached one (or the champion
        changed)."""
        model, label = self._model()
        cur = self._catalog
        if cur is not None and cur.model_label == label and (seen_version is None or seen_version == cur.version):
            return cur
        async with self._lock:
            cur = self._catalog
            if cur is not None and cur.model_label == label and (seen_version is None or seen_version == cur.version):
                return cur
            version, offers = await self.offers.load_catalog()
            self._catalog = compile_catalog(offers, version, self.policy, model, label)
            return self._catalog

    async def evidence(self, catalog: Catalog) -> Evidence:
        """The acceptance counts, at most `refresh_s` old; concurrent requests share one read."""
        cur = self._evidence
        now = time.monotonic()
        if cur is not None and cur.catalog_version == catalog.version and now - cur.read_at < self.policy.refresh_s:
            return cur.evidence
        pending = self._evidence_read
        if pending is None or pending[0] != catalog.version or pending[1].done():
            pending = (catalog.version, asyncio.ensure_future(self._read_evidence(catalog, now)))
            self._evidence_read = pending
        return await asyncio.shield(pending[1])

    async def _read_evidence(self, catalog: Catalog, now: float) -> Evidence:
        counts = await self.offers.posteriors([c.offer_id for c in catalog.offers])
        ev = build_evidence(counts, self.policy)
        self._evidence = _Evidence(ev, catalog.version, now)
        return ev

    def forget_evidence(self) -> None:
        self._evidence = None
        self._evidence_read = None

    def forget_catalog(self) -> None:
        self._catalog = None

    async def upsert(self, offers: Sequence[Offer], at: str = "$") -> int:
        """Store offers (validated by features.offers); with a segments champion loaded, its segment names are the
        only ones eligibility may name. `at`: the JSON path of the offers list, for error fields."""
        seg = self.models.get(SEGMENTS)
        known = set(seg.model.get("segments", [])) if seg is not None and isinstance(seg.model, Mapping) else set()
        if known:
            for i, o in enumerate(offers):
                for name in ("segments", "exclude_segments"):
                    bad = [s for s in getattr(o.eligibility, name) if s not in known]
                    if bad:
                        raise msgspec.ValidationError(
                            f"{name}: unknown segment {bad[0]!r}; the segments model knows {', '.join(sorted(known))}"
                            f" - at `{at}[{i}].eligibility`")
        n = await self.offers.upsert_offers(offers)
        self._catalog = None
        return n

    # ---- decisions ----

    async def decide(self, customer_id: str, channel: str, k: int = 1, *, explain: bool = False,
                     context: Mapping[str, Any] | None = None, reserve: bool = True) -> OfferAnswer:
        """The live decision for one customer on one channel: reserved and logged unless `reserve` is False (a
        dry run: nothing written, no budget used)."""
        now = self.store.clock()
        decision_id = new_decision_id()
        try:
            catalog = await self.catalog()
            # one round trip: resolve the id to its person, read profile, ledger and the catalog version
            batch = await self.offers.read_customers([customer_id], catalog.need, catalog.keep_s, now, resolve=True)
            if batch.catalog_version != catalog.version:
                catalog = await self.catalog(batch.catalog_version)
                batch = await self.offers.read_customers([customer_id], catalog.need, catalog.keep_s, now,
                                                         resolve=True)
            evidence = await self.evidence(catalog)
            job = _Job(catalog, evidence, channel, k, now, context or {}, explain, None)
            customers = [(batch.records[0], customer_id)]
            built = self._decide_batch(customers, job)
            answer = built[0][0] if not reserve else (await self._reserve_batch(customers, job, built))[0][0]
            assert answer is not None  # a live decision (no export id) keeps its answer
            return answer
        except StoreUnavailable as exc:
            log.warning("offers degraded for %s: %s", customer_id, exc)
            return OfferAnswer(customer_id=customer_id, person_id=customer_id, channel=channel, decision_id=decision_id,
                               model=None, degraded=True, policy="none", offers=[], reasons=["degraded"], caps=[],
                               degraded_reason=f"the feature store did not answer ({exc}); no offer is made rather "
                                               "than risk exceeding a contact cap",
                               excluded=[] if explain else None)

    def _decide_batch(self, customers: Sequence[tuple[CustomerRecord, str]], job: _Job,
                      ) -> list[tuple[OfferAnswer | None, bytes, Reservation]]:
        """Decide for a batch (CPU only): the answers (None for an export), export lines and reservations, in
        order."""
        decisions = decide(customers, job.catalog, job.evidence, job.channel, job.k, job.now, self.policy, self.rng,
                           job.context, job.explain, self.bank)
        checks = cap_checks(self.policy, job.channel)
        built = [self._build(d, job.catalog, job.now, job.context, job.k, job.explain, job.export_id, checks)
                 for d in decisions]
        if job.export_id:  # an export needs only the lines: the answers go now rather than at the batch's end
            return [(None, line, res) for _, line, res in built]
        return built  # type: ignore[return-value]

    async def _reserve_batch(self, customers: list[tuple[CustomerRecord, str]], job: _Job,
                             built: list[tuple[OfferAnswer | None, bytes, Reservation]],
                             ) -> list[tuple[OfferAnswer | None, bytes]]:
        """Reserve a decided batch in one script call; decide again, on the ledger the script returns, for the
        customers whose ledger changed meanwhile. Returns (answer, export line) per customer, in order (for an
        export, the lines only: no answers)."""
        out: list[tuple[OfferAnswer | None, bytes] | None] = [None] * len(customers)
        pending = list(range(len(customers)))
        records = [c for c, _ in customers]
        policy = self.policy
        ttl = policy.export_ttl_days * 86400
        for attempt in range(policy.max_retries + 1):
            if attempt:
                built = self._decide_batch([(records[i], customers[i][1]) for i in pending], job)
            results = await self.offers.reserve([b[2] for b in built], job.now, job.catalog.keep_s, ttl)
            retry: list[int] = []
            failed: list[tuple[int, str]] = []
            for i, (ans, line, _res), got in zip(pending, built, results):
                if got.status == "ok":
                    out[i] = (ans, line)
                elif got.status == "duplicate":
                    out[i] = (None if job.export_id else msgspec.json.decode(got.line or b"{}", type=OfferAnswer),
                              got.line or b"")
                else:
                    r = records[i]
                    records[i] = CustomerRecord(r.person_id, r.profile, r.owned, got.ledger or LedgerState())
                    if got.status == "conflict" and attempt < policy.max_retries:
                        retry.append(i)
                    else:  # refused by the script's re-check, or still contended: offer nothing, and log that
                        failed.append((i, "ledger_contention" if got.status == "conflict"
                                       else f"ledger_refused:{got.reason}"))
            for i, why in failed:
                log.warning("offers: no offer for %s (%s)", customers[i][1], why)
                out[i] = await self._nothing(records[i], customers[i][1], why, job.catalog, job.channel, job.now,
                                             job.context, job.k, job.explain, job.export_id)
            pending = retry
            if not pending:
                break
        return out  # type: ignore[return-value]

    async def _nothing(self, record: CustomerRecord, customer_id: str, why: str, catalog: Catalog, channel: str,
                       now: float, context: Mapping[str, Any], k: int, explain: bool,
                       export_id: str | None) -> tuple[OfferAnswer, bytes]:
        """An empty decision (logged, nothing reserved) when reservation failed for good."""
        d = Decision(customer_id=customer_id, person_id=record.person_id, channel=channel, segment="",
                     entries=[], excluded=[], candidates=([], []), policy="none", model=None, reasons=[why], caps=[],
                     ledger_version=record.ledger.version)
        ans, line, res = self._build(d, catalog, now, context, k, explain, export_id, cap_checks(self.policy, channel))
        got = (await self.offers.reserve([res], now, catalog.keep_s, self.policy.export_ttl_days * 86400))[0]
        if got.status == "duplicate":
            return msgspec.json.decode(got.line or b"{}", type=OfferAnswer), got.line or b""
        return ans, line

    def _build(self, d: Decision, catalog: Catalog, now: float, context: Mapping[str, Any], k: int, explain: bool,
               export_id: str | None, checks: Sequence[CapCheck]) -> tuple[OfferAnswer, bytes, Reservation]:
        """The answer, the export line (export only) and the reservation with its log record. `checks`: the caps
        the reservation re-checks (cap_checks for the channel)."""
        decision_id = new_decision_id()
        by_id = catalog.index
        offers = [OfferOut(
            offer_id=e.offer_id, name=by_id[e.offer_id].offer.name, rank=e.rank, score=e.score, propensity=e.propensity,
            propensity_source=e.source, prior_propensity=e.prior, value=e.value, lever=e.lever, p=e.p,
            outcomes=Outcomes(e.impressions, e.accepts), reasons=e.reasons,
            treatment=by_id[e.offer_id].offer.channels[d.channel]) for e in d.entries]
        ans = OfferAnswer(
            customer_id=d.customer_id, person_id=d.person_id, channel=d.channel, decision_id=decision_id,
            model=d.model, degraded=False, policy=d.policy, offers=offers, reasons=d.reasons,
            caps=self._caps_out(d.caps),
            excluded=[ExcludedOut(x.offer_id, x.rule, x.detail) for x in d.excluded][: self.policy.explain_limit]
            if explain else None)
        entries = []
        for e in d.entries:
            ent = {"id": e.offer_id, "rank": e.rank, "score": e.score, "p": e.p, "propensity": e.propensity,
                   "source": e.source, "value": e.value, "lever": e.lever}
            own = by_id[e.offer_id].log_attrs
            if own:  # the offer's model inputs besides id and value, as serving saw them (training reads them)
                ent["attrs"] = own
            entries.append(ent)
        ctx = {"k": k, "segment": d.segment, "candidates": {"ids": d.candidates[0], "scores": d.candidates[1]},
               "exploration": self.policy.exploration, "draws": self.policy.draws,
               "ledger_version": d.ledger_version, "reasons": d.reasons}
        if d.attributes:  # the customer and context model inputs of this decision (training.offer_log reads them)
            ctx["attributes"] = d.attributes
        if context:
            ctx["request"] = dict(context)
        if export_id:
            ctx["export_id"] = export_id
        rec = DecisionRecord(
            decision_id=decision_id, ts=now, surface="export" if export_id else "offers", channel=d.channel,
            person_id=d.person_id, customer_id=d.customer_id, model=d.model, policy=d.policy, degraded=False,
            entries=_json.encode(entries).decode(), context=_json.encode(ctx).decode())
        line = _json.encode(ans) if export_id else b""
        res = Reservation(d.person_id, d.ledger_version, d.contacts(decision_id, now), checks,
                          [by_id[e.offer_id].check() for e in d.entries], rec, export_id, line)
        return ans, line, res

    def _caps_out(self, caps: Sequence[CapUse]) -> list[CapOut]:
        """The caps of an answer; the last unused set is kept (most customers of an export share one)."""
        memo = self._caps_memo
        if memo is not None and memo[0] is caps:
            return memo[1]
        out = [CapOut(c.key, c.max, c.window_days, c.used, c.remaining) for c in caps]
        if isinstance(caps, tuple):  # decide's shared caps of an unused ledger (recsvc.offers._caps)
            self._caps_memo = (caps, out)
        return out

    # ---- outcomes ----

    async def record_outcomes(self, events: Sequence[Event]) -> list[OutcomeCount]:
        """Offer impressions, accepts and dismisses (linked by decision_id) into the ledger and the acceptance counts.
        Call after the events were ingested; a replayed event (same event_id) counts once, whatever the caller does."""
        offer_events = [e for e in events if e.type in OFFER_EVENTS and e.offer_id and e.event_id]
        if not offer_events:
            return []
        ids = {_identifier(e) for e in offer_events}
        sem = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def resolve(i: str) -> tuple[str, str]:
            async with sem:
                return i, await self.store.resolve(i)

        persons = dict(await asyncio.gather(*[resolve(i) for i in ids]))
        now = self.store.clock()
        outcomes = [Outcome(e.event_id, persons[_identifier(e)], e.type, e.offer_id,  # type: ignore[arg-type]
                            e.decision_id, e.timestamp.timestamp() if e.timestamp else now) for e in offer_events]
        counts = await self.offers.record_outcomes(outcomes, now)
        self.forget_evidence()
        return counts

    # ---- consent ----

    async def set_consent(self, customer_id: str, consent: Mapping[str, bool]) -> dict[str, Any]:
        person = await self.store.resolve(customer_id)
        now = self.store.clock()
        traits = {}
        for purpose, granted in consent.items():
            traits[f"consent_{purpose}"] = "granted" if granted else "denied"
            traits[f"consent_{purpose}_at"] = f"{now:.0f}"
        await self.store.set_traits({person: traits})
        await self.offers.index_traits({person: traits})
        return await self.consent(customer_id)

    async def consent(self, customer_id: str) -> dict[str, Any]:
        person = await self.store.resolve(customer_id)
        prof = await self.store.profile(person)
        traits = prof.traits if prof is not None else {}
        purposes = sorted(set(CHANNELS) | {t[8:] for t in traits if t.startswith("consent_") and not t.endswith("_at")})
        return {"customer_id": customer_id, "person_id": person,
                "consent": {p: consent_value(traits, p, self.policy) for p in purposes},
                "recorded": {p: traits[f"consent_{p}"] for p in purposes if f"consent_{p}" in traits}}

    # ---- bulk export ----

    def start_export(self, req: ExportRequest) -> ExportCursor:
        """Check the request and its cursor before the stream starts (errors become 4xx, not a broken stream)."""
        fp = export_fingerprint(req)
        if req.cursor is None:
            return ExportCursor(new_decision_id(), fp, None, 0)
        cur = decode_cursor(req.cursor)
        if cur.fingerprint != fp:
            raise CursorMismatch("cursor: it belongs to an export with another audience, channel, k or context; "
                                 "re-post the same body with the cursor", "cursor")
        return cur

    async def export(self, req: ExportRequest, cursor: ExportCursor) -> AsyncIterator[bytes]:
        """NDJSON: one line per customer (the live answer plus the `cursor` to resume after it), then a trailer
        {"done": true, ...}. Nobody (left) in the audience: an empty body. The store failing mid-way: a last line
        {"error": ...} with the cursor to resume from.

        A software pipeline over batches: while batch i is decided (CPU), Redis reads batch i+1 and reserves
        batch i-1; batch i-1's lines go out once its reservation is back."""
        written = 0
        last = cursor
        pages = self._audience(req, cursor).__aiter__()
        reading: asyncio.Future[tuple[list[tuple[str, str, ExportCursor]], _Job, list[CustomerRecord]]] | None = None
        reserving: tuple[list[tuple[str, str, ExportCursor]], asyncio.Future[list[tuple[OfferAnswer, bytes]]]] | None
        reserving = None
        try:
            page = await anext(pages, None)
            if page is not None:
                reading = asyncio.ensure_future(self._export_read(page, req, cursor.export_id))
            while reading is not None:
                page, job, records = await reading
                nxt = await anext(pages, None)
                reading = (asyncio.ensure_future(self._export_read(nxt, req, cursor.export_id))
                           if nxt is not None else None)
                await asyncio.sleep(0)  # let the read go out before this batch's CPU work
                customers = list(zip(records, [c for c, _, _ in page]))
                task = asyncio.ensure_future(self._reserve_batch(customers, job, self._decide_batch(customers, job)))
                if reserving is not None:
                    done_page, done = reserving
                    chunk, last = _lines(done_page, [line for _, line in await done], last)
                    written += len(done_page)
                    yield chunk  # one write per batch: every line still carries its own cursor
                reserving = (page, task)
            if reserving is not None:
                done_page, done = reserving
                reserving = None
                chunk, last = _lines(done_page, [line for _, line in await done], last)
                written += len(done_page)
                yield chunk
        except StoreUnavailable as exc:
            log.warning("export %s interrupted: %s", cursor.export_id, exc)
            yield _json.encode({"error": "store_unavailable", "detail": str(exc), "cursor": encode_cursor(last),
                                "written": written}) + b"\n"
            return
        finally:
            # a client that went away: a batch in flight may still reserve; its customers are marked as decided by
            # this export, so a resume with the last cursor the client got replays their lines, charging nobody twice
            left: list[asyncio.Future[Any]] = []
            if reading is not None:
                left.append(reading)
            if reserving is not None:
                left.append(reserving[1])
            for fut in left:
                fut.cancel()
                fut.add_done_callback(_swallow)
        if written:
            yield _json.encode({"done": True, "customers": written, "export_id": cursor.export_id,
                                "cursor": encode_cursor(last)}) + b"\n"

    async def _export_read(self, page: list[tuple[str, str, ExportCursor]], req: ExportRequest, export_id: str,
                           ) -> tuple[list[tuple[str, str, ExportCursor]], _Job, list[CustomerRecord]]:
        now = self.store.clock()
        catalog = await self.catalog()
        persons = [p for _, p, _ in page]
        batch = await self.offers.read_customers(persons, catalog.need, catalog.keep_s, now)
        if batch.catalog_version != catalog.version:
            catalog = await self.catalog(batch.catalog_version)
            batch = await self.offers.read_customers(persons, catalog.need, catalog.keep_s, now)
        evidence = await self.evidence(catalog)
        return page, _Job(catalog, evidence, req.channel, req.k, now, req.context, False, export_id), batch.records

    async def _audience(self, req: ExportRequest, cursor: ExportCursor
                        ) -> AsyncIterator[list[tuple[str, str, ExportCursor]]]:
        """Pages of (id as asked, person id, the cursor that resumes after this customer). Erased people are
        skipped (the next cursor moves past them)."""
        size = self.policy.export_batch
        x, fp = cursor.export_id, cursor.fingerprint
        if req.customer_ids is not None:
            seen: set[str] = set()
            ids = [i for i in req.customer_ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
            pos = min(cursor.position, len(ids))
            sem = asyncio.Semaphore(RESOLVE_CONCURRENCY)

            async def resolve(i: str) -> str:
                async with sem:
                    return await self.store.resolve(i)

            while pos < len(ids):
                page = ids[pos: pos + size]
                persons = list(await asyncio.gather(*[resolve(i) for i in page]))
                gone = await self.offers.erased(persons)
                yield [(i, p, ExportCursor(x, fp, None, pos + n + 1))
                       for n, (i, p) in enumerate(zip(page, persons)) if p not in gone]
                pos += len(page)
            return
        kind, key = ("segment", req.segment) if req.segment is not None else ("consent", req.channel)
        after = cursor.after
        nxt: asyncio.Future[list[str]] | None = asyncio.ensure_future(self.offers.audience(kind, key, after, size))
        while nxt is not None:
            page = await nxt
            if not page:
                return
            # read the next page while this one is decided
            nxt = asyncio.ensure_future(self.offers.audience(kind, key, page[-1], size)) if len(page) == size else None
            gone = await self.offers.erased(page)
            yield [(p, p, ExportCursor(x, fp, p, 0)) for p in page if p not in gone]


def _lines(page: list[tuple[str, str, ExportCursor]], lines: list[bytes],
           last: ExportCursor) -> tuple[bytes, ExportCursor]:
    """The NDJSON of a batch, each line with the cursor that resumes after its customer."""
    out = []
    for (_, _, after), line in zip(page, lines):
        out.append(line[:-1] + b',"cursor":' + _json.encode(encode_cursor(after)) + b"}\n")
        last = after
    return b"".join(out), last


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _identifier(e: Event) -> str:
    return e.customer_id or e.anonymous_id or e.device_id or e.email_hash or ""

