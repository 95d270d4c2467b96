"""Training configuration: defaults, a TOML file, then `--set family.key=value` overrides, in that order."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    data_dir: Path = Path("var/data")
    source: str | None = None  # None: the offline log under data_dir; else a Parquet/CSV file of log rows
    split_date: str = "2011-11-01"
    end_date: str = "2011-12-10"
    validation_days: int = 39
    seed: int = 7
    force: bool = False
    tracking_uri: str | None = None
    quick: bool = False  # fewer iterations and a smaller grid: for tests
    progress: bool = True
    workers: int = 0  # processes for independent work (training.parallel); 0: two where there are two cores
    publish_redis_url: str | None = None  # segments: publish traits to this Redis (default RECSVC_REDIS_URL)
    recommender: dict[str, Any] = field(default_factory=dict)
    segments: dict[str, Any] = field(default_factory=dict)
    propensity: dict[str, Any] = field(default_factory=dict)


def _coerce(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def load_config(path: Path | None, overrides: list[str], **top: Any) -> TrainConfig:
    """Defaults, then the TOML file (top-level settings and [recommender]/[segments]/[propensity] tables), then the
    command line's top-level values (None = not given), then `--set family.key=value` overrides."""
    cfg = TrainConfig()
    if path is not None:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        for family in ("recommender", "segments", "propensity"):
            getattr(cfg, family).update(data.pop(family, {}))
        for key, value in data.items():
            if not hasattr(cfg, key):
                raise ValueError(f"{path}: unknown setting {key!r}")
            default = getattr(cfg, key)
            expected = str if default is None or isinstance(default, Path) else type(default)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"{path}: {key} must be {expected.__name__}, got {value!r}")
            setattr(cfg, key, Path(value) if key == "data_dir" else value)
    for key, value in top.items():
        if value is not None:
            setattr(cfg, key, value)
    for item in overrides:
        key, sep, value = item.partition("=")
        family, dot, name = key.partition(".")
        if not sep or not dot or family not in ("recommender", "segments", "propensity"):
            raise ValueError(
                f"--set {item!r}: expected family.key=value with family recommender, segments or propensity"
            )
        target = getattr(cfg, family)
        *parents, leaf = name.split(".")  # recommender.event_weights.purchase=10 sets a nested table entry
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {family}.{parent} is not a table")
        target[leaf] = _coerce(value)
    return cfg
