"""The next-best-offer policy settings: contact caps, consent defaults, exploration, propensity priors, export.

Read from TOML (`recsvc/offers.toml`, or the file RECSVC_OFFERS_CONFIG names) with tomllib; an unknown key or a value
out of range refuses to start the service, with the key named (`caps.channels.emial: unknown channel`).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.schema import CHANNELS
from recsvc.security import ConfigError

DEFAULT_OFFERS_CONFIG = Path(__file__).resolve().parent / "offers.toml"
DAY = 86400.0
TOTAL = "total"
GRANTED = frozenset({"granted", "true", "yes", "1", "opt-in", "opted_in"})


class OfferConfigError(ConfigError):
    """The offers configuration is unusable; the message names the key (the service refuses to start)."""


@dataclass(frozen=True)
class Cap:
    """At most `max` offers within `window_s` seconds on `key` (a channel, or "total" for all channels together)."""

    key: str
    max: int
    window_s: float


@dataclass(frozen=True)
class PriorSettings:
    base_rate: float = 0.05  # acceptance expected of a customer we know nothing about
    max_affinity_rate: float = 0.25  # acceptance expected when the customer's affinity to the offer saturates
    affinity_scale: float = 5.0  # decayed affinity at which the signal reaches 63% (5 = one recent purchase)
    category_weight: float = 0.5  # a category match counts this much of an item match
    segment_strength: float = 50.0  # pseudo-impressions of a segment's configured rate against its pooled outcomes
    segments: Mapping[str, float] = field(default_factory=dict)  # segment -> expected acceptance


@dataclass(frozen=True)
class OfferPolicy:
    exploration: float = 0.1  # share of decisions ranked by Thompson sampling
    draws: int = 200  # Monte Carlo draws for the logged probabilities (the decision's own draw is one of them)
    prior_strength: float = 20.0  # pseudo-impressions the prior or model estimate weighs against observed outcomes
    # ... and those of a model trained on this catalog's outcomes, against the outcomes after its training data
    model_strength: float = 200.0
    max_retries: int = 6  # re-decisions after a concurrent change of the same customer's ledger
    refresh_s: float = 1.0  # how stale the cached acceptance counts may be (0: read them on every decision)
    seed: int | None = None  # fixed random seed (tests); None: from the OS
    default_cooldown_days: float = 30.0  # after a dismiss, for offers that do not set cooldown_days
    caps: tuple[Cap, ...] = (Cap(TOTAL, 3, DAY), Cap("email", 1, 7 * DAY), Cap("sms", 1, 7 * DAY))
    consent_defaults: Mapping[str, bool] = field(default_factory=lambda: {
        "web": True, "app": True, "store": True, "call_center": True, "email": False, "sms": False, "social": False})
    prior: PriorSettings = field(default_factory=PriorSettings)
    export_batch: int = 500  # customers read, decided and reserved per round trip
    export_ttl_days: float = 7.0  # how long an interrupted export can be resumed without charging anyone twice
    explain_limit: int = 200  # offers listed as left out with ?explain=true

    def caps_for(self, channel: str) -> tuple[Cap, ...]:
        return _caps_for(self.caps, channel)

    @property
    def max_cap_window_s(self) -> float:
        return max((c.window_s for c in self.caps), default=DAY)

    def consent_default(self, purpose: str) -> bool:
        return self.consent_defaults.get(purpose, False)


@functools.lru_cache(maxsize=256)
def _caps_for(caps: tuple[Cap, ...], channel: str) -> tuple[Cap, ...]:
    return tuple(c for c in caps if c.key in (channel, TOTAL))


def consent_value(traits: Mapping[str, str], purpose: str, policy: OfferPolicy) -> bool:
    """Has the customer consented to `purpose` (a channel or another purpose)? Trait `consent_<purpose>`, else the
    configured default. An unreadable value counts as denied."""
    v = traits.get(f"consent_{purpose}")
    if v is None:
        return policy.consent_default(purpose)
    v = v.strip().lower()
    return v in GRANTED


def _num(v: Any, where: str, lo: float, hi: float, integer: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise OfferConfigError(f"{where}: expected {kind} from {lo:g} to {hi:g}, got {v!r}")
    return v


def _table(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise OfferConfigError(f"{where}: expected a table")
    return v


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise OfferConfigError(f"{where}.{extra[0]}: unknown key; known: {', '.join(sorted(known))}" if where
                               else f"{extra[0]}: unknown table; known: {', '.join(sorted(known))}")


def _cap(key: str, v: Any, where: str) -> Cap:
    t = _table(v, where)
    _unknown(t, {"max", "days"}, where)
    if "max" not in t or "days" not in t:
        raise OfferConfigError(f"{where}: expected {{ max = N, days = D }}")
    return Cap(key, int(_num(t["max"], f"{where}.max", 0, 1_000_000, integer=True)),
               float(_num(t["days"], f"{where}.days", 1 / 24, 3650)) * DAY)


def parse_policy(doc: Mapping[str, Any]) -> OfferPolicy:
    _unknown(doc, {"policy", "caps", "consent", "prior", "export"}, "")
    kw: dict[str, Any] = {}
    pol = _table(doc.get("policy", {}), "policy")
    _unknown(pol, {"exploration", "draws", "prior_strength", "model_strength", "max_retries", "refresh_seconds", "seed",
                   "default_cooldown_days", "explain_limit"}, "policy")
    if "exploration" in pol:
        kw["exploration"] = float(_num(pol["exploration"], "policy.exploration", 0, 1))
    if "draws" in pol:
        kw["draws"] = int(_num(pol["draws"], "policy.draws", 1, 100_000, integer=True))
    if "prior_strength" in pol:
        kw["prior_strength"] = float(_num(pol["prior_strength"], "policy.prior_strength", 0.01, 1e6))
    if "model_strength" in pol:
        kw["model_strength"] = float(_num(pol["model_strength"], "policy.model_strength", 0.01, 1e9))
    prior_strength = kw.get("prior_strength", OfferPolicy.prior_strength)
    if "model_strength" not in kw:
        kw["model_strength"] = max(OfferPolicy.model_strength, prior_strength)
    elif kw["model_strength"] < prior_strength:
        raise OfferConfigError("policy.model_strength: must be at least policy.prior_strength (a model trained on the "
                               "catalog's outcomes is worth at least the prior)")
    if "max_retries" in pol:
        kw["max_retries"] = int(_num(pol["max_retries"], "policy.max_retries", 0, 100, integer=True))
    if "refresh_seconds" in pol:
        kw["refresh_s"] = float(_num(pol["refresh_seconds"], "policy.refresh_seconds", 0, 3600))
    if "seed" in pol:
        kw["seed"] = int(_num(pol["seed"], "policy.seed", 0, 2**63 - 1, integer=True))
    if "default_cooldown_days" in pol:
        kw["default_cooldown_days"] = float(_num(pol["default_cooldown_days"], "policy.default_cooldown_days", 0, 3650))
    if "explain_limit" in pol:
        kw["explain_limit"] = int(_num(pol["explain_limit"], "policy.explain_limit", 0, 10_000, integer=True))

    if "caps" in doc:
        caps_doc = _table(doc["caps"], "caps")
        _unknown(caps_doc, {TOTAL, "channels"}, "caps")
        caps: list[Cap] = []
        if TOTAL in caps_doc:
            caps.append(_cap(TOTAL, caps_doc[TOTAL], "caps.total"))
        for ch, v in _table(caps_doc.get("channels", {}), "caps.channels").items():
            if ch not in CHANNELS:
                raise OfferConfigError(f"caps.channels.{ch}: unknown channel; known: {', '.join(CHANNELS)}")
            caps.append(_cap(ch, v, f"caps.channels.{ch}"))
        kw["caps"] = tuple(caps)

    if "consent" in doc:
        con = _table(doc["consent"], "consent")
        _unknown(con, {"defaults"}, "consent")
        defaults = dict(OfferPolicy().consent_defaults)
        for purpose, v in _table(con.get("defaults", {}), "consent.defaults").items():
            if v not in ("granted", "denied"):
                raise OfferConfigError(f"consent.defaults.{purpose}: expected \"granted\" or \"denied\", got {v!r}")
            defaults[purpose] = v == "granted"
        missing = [c for c in CHANNELS if c not in defaults]
        if missing:
            raise OfferConfigError(f"consent.defaults.{missing[0]}: every channel needs a default")
        kw["consent_defaults"] = defaults

    if "prior" in doc:
        pr = _table(doc["prior"], "prior")
        _unknown(pr, {"base_rate", "max_affinity_rate", "affinity_scale", "category_weight", "segment_strength",
                      "segments"}, "prior")
        pkw: dict[str, Any] = {}
        for name, lo, hi in (("base_rate", 0, 1), ("max_affinity_rate", 0, 1), ("affinity_scale", 1e-6, 1e9),
                             ("category_weight", 0, 1), ("segment_strength", 0, 1e9)):
            if name in pr:
                pkw[name] = float(_num(pr[name], f"prior.{name}", lo, hi))
        segs = _table(pr.get("segments", {}), "prior.segments")
        pkw["segments"] = {str(k): float(_num(v, f"prior.segments.{k}", 0, 1)) for k, v in segs.items()}
        kw["prior"] = PriorSettings(**pkw)

    if "export" in doc:
        ex = _table(doc["export"], "export")
        _unknown(ex, {"batch", "resume_days"}, "export")
        if "batch" in ex:
            kw["export_batch"] = int(_num(ex["batch"], "export.batch", 1, 10_000, integer=True))
        if "resume_days" in ex:
            kw["export_ttl_days"] = float(_num(ex["resume_days"], "export.resume_days", 1 / 24, 365))
    return OfferPolicy(**kw)


def load_policy(path: Path | None = None) -> OfferPolicy:
    path = Path(path) if path is not None else DEFAULT_OFFERS_CONFIG
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OfferConfigError(f"RECSVC_OFFERS_CONFIG: cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OfferConfigError(f"RECSVC_OFFERS_CONFIG: {path} is not valid TOML: {exc}") from exc
    return parse_policy(doc)
