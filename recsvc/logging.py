"""Structured JSON logs on stderr: one object per line, with time, level, logger, message and any `extra` fields.

Only the `recsvc` logger tree is configured, so importing the service never rewires an embedding application.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}

# The id of the request being served (set by recsvc.telemetry for the request's duration), added to every JSON line.
REQUEST_ID: ContextVar[str | None] = ContextVar("recsvc_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if "request_id" not in out and (rid := REQUEST_ID.get()) is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(json_logs: bool = True, level: int = logging.INFO) -> None:
    """Send the `recsvc` loggers to stderr, as JSON lines or plain text; calling it again replaces the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("recsvc")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
