"""Recommendation rules (filters and boosts) loaded from TOML and resolved per channel and segment.

A bad file refuses to start the service with the offending key named, e.g. `channels.email.weights.sesion: unknown`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from features.schema import CHANNELS
from recsvc.security import ConfigError

DEFAULT_RULES = Path(__file__).resolve().parent / "rules.toml"
PurchasedRule = Literal["exclude", "cooldown", "allow"]


class RulesError(ConfigError):
    """The rules file is unusable; the message names the key."""


@dataclass(frozen=True)
class Weights:
    model: float = 1.0
    session: float = 0.7
    context: float = 0.9
    cart: float = 0.4
    category: float = 0.15
    trending: float = 0.2
    popular: float = 0.05


@dataclass(frozen=True)
class ChannelRules:
    exclude_returned: bool = True
    exclude_unavailable: bool = True
    exclude_in_cart: bool = True
    purchased: PurchasedRule = "cooldown"
    purchase_cooldown_days: float = 7.0
    max_per_category: int = 4
    weights: Weights = field(default_factory=Weights)


@dataclass(frozen=True)
class SegmentRules:
    repeat_boost: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)  # overrides of Weights fields


@dataclass(frozen=True)
class Rules:
    defaults: ChannelRules
    channels: dict[str, ChannelRules]
    segments: dict[str, SegmentRules]

    def for_channel(self, channel: str) -> ChannelRules:
        return self.channels.get(channel, self.defaults)

    def segment(self, name: str | None) -> SegmentRules | None:
        return self.segments.get(name) if name else None


def _weights(base: Weights, table: Any, where: str) -> Weights:
    if not isinstance(table, dict):
        raise RulesError(f"{where}: expected a table of signal = weight")
    known = {f.name for f in fields(Weights)}
    out = {}
    for key, value in table.items():
        if key not in known:
            raise RulesError(f"{where}.{key}: unknown signal; known: {', '.join(sorted(known))}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise RulesError(f"{where}.{key}: expected a number from 0 to 100, got {value!r}")
        out[key] = float(value)
    return replace(base, **out)


def _channel(base: ChannelRules, table: Any, where: str) -> ChannelRules:
    if not isinstance(table, dict):
        raise RulesError(f"{where}: expected a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{where}.{key}"
        if key == "weights":
            out["weights"] = _weights(base.weights, value, path)
        elif key in ("exclude_returned", "exclude_unavailable", "exclude_in_cart"):
            if not isinstance(value, bool):
                raise RulesError(f"{path}: expected true or false, got {value!r}")
            out[key] = value
        elif key == "purchased":
            if value not in ("exclude", "cooldown", "allow"):
                raise RulesError(f"{path}: expected \"exclude\", \"cooldown\" or \"allow\", got {value!r}")
            out[key] = value
        elif key == "purchase_cooldown_days":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 3650:
                raise RulesError(f"{path}: expected days from 0 to 3650, got {value!r}")
            out[key] = float(value)
        elif key == "max_per_category":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                raise RulesError(f"{path}: expected an integer from 0 to 100, got {value!r}")
            out[key] = value
        else:
            raise RulesError(f"{path}: unknown rule")
    return replace(base, **out)


def parse_rules(doc: dict[str, Any]) -> Rules:
    unknown = set(doc) - {"defaults", "channels", "segments"}
    if unknown:
        raise RulesError(f"{sorted(unknown)[0]}: unknown table; expected defaults, channels, segments")
    defaults = _channel(ChannelRules(), doc.get("defaults", {}), "defaults")
    channels_doc = doc.get("channels", {})
    if not isinstance(channels_doc, dict):
        raise RulesError("channels: expected a table of channel tables")
    channels = {}
    for name, table in channels_doc.items():
        if name not in CHANNELS:
            raise RulesError(f"channels.{name}: unknown channel; known: {', '.join(CHANNELS)}")
        channels[name] = _channel(defaults, table, f"channels.{name}")
    for name in CHANNELS:
        channels.setdefault(name, defaults)
    segments = {}
    seg_doc = doc.get("segments", {})
    if not isinstance(seg_doc, dict):
        raise RulesError("segments: expected a table of segment tables")
    for name, table in seg_doc.items():
        where = f"segments.{name}"
        if not isinstance(table, dict):
            raise RulesError(f"{where}: expected a table")
        boost = table.get("repeat_boost", 0.0)
        if not isinstance(boost, (int, float)) or isinstance(boost, bool) or not 0 <= boost <= 100:
            raise RulesError(f"{where}.repeat_boost: expected a number from 0 to 100, got {boost!r}")
        extra = set(table) - {"repeat_boost", "weights"}
        if extra:
            raise RulesError(f"{where}.{sorted(extra)[0]}: unknown rule; expected repeat_boost, weights")
        overrides = _weights(Weights(), table.get("weights", {}), f"{where}.weights")
        given = table.get("weights", {})
        segments[name] = SegmentRules(float(boost), {k: getattr(overrides, k) for k in given})
    return Rules(defaults, channels, segments)


def load_rules(path: Path | None = None) -> Rules:
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"RECSVC_RULES: cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"RECSVC_RULES: {path} is not valid TOML: {exc}") from exc
    return parse_rules(doc)
