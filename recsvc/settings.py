"""Service settings, read once from the environment by `Settings.from_env()`; frozen, never module-level."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from features.clock import Clock, parse_instant, replay_clock, wall_clock
from features.content import DEFAULT_SLOTS, parse_slots

DEFAULT_DATA_DIR = "var/data"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def _bool(v: str | None, default: bool) -> bool:
    if v is None or v == "":
        return default
    return v.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Defaults are the embedded local demo, documented in docs/configuration.md."""

    redis_url: str | None = None  # RECSVC_REDIS_URL; None = embedded in-process store
    redis_prefix: str = "rs:v1"  # RECSVC_REDIS_PREFIX
    redis_max_connections: int = 64  # RECSVC_REDIS_MAX_CONNECTIONS: sized for 1 worker x 32-64 in-flight requests
    redis_timeout_s: float = 0.05  # RECSVC_REDIS_TIMEOUT_MS / 1000: beyond this a read degrades
    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))  # RECSVC_DATA_DIR: the offline log
    tracking_uri: str = DEFAULT_TRACKING_URI  # MLFLOW_TRACKING_URI
    api_keys: str = ""  # RECSVC_API_KEYS: "key=scope+scope,key2=admin"
    api_keys_file: str | None = None  # RECSVC_API_KEYS_FILE: lines "sha256hex scope+scope"
    open_access: bool = False  # RECSVC_OPEN: the local demo runs without keys (and logs it)
    rate_limit_per_minute: int = 6000  # RECSVC_RATE_LIMIT: requests per key per minute
    max_body_bytes: int = 1_048_576
    log_json: bool = True  # RECSVC_LOG_JSON
    as_of: float | None = None  # RECSVC_AS_OF (ISO date/time): serve as if it were then (replaying historical data)
    load_models: bool = True  # RECSVC_LOAD_MODELS: load champions from MLflow at start
    model_poll_s: float = 60.0  # RECSVC_MODEL_POLL_S: how often to look for a new champion (0: never)
    model_start_timeout_s: float = 30.0  # RECSVC_MODEL_START_TIMEOUT_S: wait this long for champions at start
    model_cache_dir: Path | None = None  # RECSVC_MODEL_CACHE_DIR: downloaded bundles (default: a temp directory)
    rules_path: Path | None = None  # RECSVC_RULES: TOML recommendation rules (default: recsvc/rules.toml)
    catalog_refresh_s: float = 30.0  # RECSVC_CATALOG_REFRESH_S: age of the in-process catalog snapshot before refresh
    popular_refresh_s: float = 10.0  # RECSVC_POPULAR_REFRESH_S: same for the trending/popular snapshots
    offers_config: Path | None = None  # RECSVC_OFFERS_CONFIG: TOML offer policy (default: recsvc/offers.toml)
    rate_limits: str = ""  # RECSVC_RATE_LIMITS: per-key overrides "keyid=N,..." (keyid: 12 hex of the key's sha256)
    metrics_admin: bool = False  # RECSVC_METRICS_ADMIN: /metrics needs the admin scope (default: open like /health)
    slow_request_ms: float = 100.0  # RECSVC_SLOW_REQUEST_MS: requests at least this slow are logged
    content_slots: tuple[str, ...] = DEFAULT_SLOTS  # RECSVC_CONTENT_SLOTS: the slots content can be placed in
    content_refresh_s: float = 5.0  # RECSVC_CONTENT_REFRESH_S: how often the cached content catalog checks for changes

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        e = dict(os.environ if env is None else env)
        return cls(
            redis_url=e.get("RECSVC_REDIS_URL") or None,
            redis_prefix=e.get("RECSVC_REDIS_PREFIX", "rs:v1"),
            redis_max_connections=int(e.get("RECSVC_REDIS_MAX_CONNECTIONS", "64")),
            redis_timeout_s=float(e.get("RECSVC_REDIS_TIMEOUT_MS", "50")) / 1000.0,
            data_dir=Path(e.get("RECSVC_DATA_DIR", DEFAULT_DATA_DIR)),
            tracking_uri=e.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
            api_keys=e.get("RECSVC_API_KEYS", ""),
            api_keys_file=e.get("RECSVC_API_KEYS_FILE") or None,
            open_access=_bool(e.get("RECSVC_OPEN"), False),
            rate_limit_per_minute=int(e.get("RECSVC_RATE_LIMIT", "6000")),
            log_json=_bool(e.get("RECSVC_LOG_JSON"), True),
            as_of=parse_instant(e["RECSVC_AS_OF"]) if e.get("RECSVC_AS_OF") else None,
            load_models=_bool(e.get("RECSVC_LOAD_MODELS"), True),
            model_poll_s=float(e.get("RECSVC_MODEL_POLL_S", "60")),
            model_start_timeout_s=float(e.get("RECSVC_MODEL_START_TIMEOUT_S", "30")),
            model_cache_dir=Path(e["RECSVC_MODEL_CACHE_DIR"]) if e.get("RECSVC_MODEL_CACHE_DIR") else None,
            rules_path=Path(e["RECSVC_RULES"]) if e.get("RECSVC_RULES") else None,
            catalog_refresh_s=float(e.get("RECSVC_CATALOG_REFRESH_S", "30")),
            popular_refresh_s=float(e.get("RECSVC_POPULAR_REFRESH_S", "10")),
            offers_config=Path(e["RECSVC_OFFERS_CONFIG"]) if e.get("RECSVC_OFFERS_CONFIG") else None,
            rate_limits=e.get("RECSVC_RATE_LIMITS", ""),
            metrics_admin=_bool(e.get("RECSVC_METRICS_ADMIN"), False),
            slow_request_ms=float(e.get("RECSVC_SLOW_REQUEST_MS", "100")),
            content_slots=parse_slots(e["RECSVC_CONTENT_SLOTS"]) if e.get("RECSVC_CONTENT_SLOTS") else DEFAULT_SLOTS,
            content_refresh_s=float(e.get("RECSVC_CONTENT_REFRESH_S", "5")),
        )

    def clock(self) -> Clock:
        """The service's notion of now: the wall clock, or a replay clock started at `as_of`."""
        return replay_clock(self.as_of) if self.as_of is not None else wall_clock
