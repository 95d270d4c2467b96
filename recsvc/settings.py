"""Service settings, read once from the environment by `Settings.from_env()`; frozen, never module-level."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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
        )
