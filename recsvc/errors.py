"""The one place where exceptions become HTTP answers: bad input is a 4xx naming the field, never a 500.

Domain code raises domain errors (subclasses of RecsvcError) and msgspec raises its own; nothing else maps status codes.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Empty
from litestar.utils.scope.state import ScopeState

from features.store import StoreUnavailable

log = logging.getLogger("recsvc.errors")
RETRY_AFTER_S = "1"


class RecsvcError(Exception):
    """A domain error: its class says the status, `field` names the offending input."""

    status_code = 400
    error = "bad_request"

    def __init__(self, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = headers


class NotFound(RecsvcError):
    status_code = 404
    error = "not_found"


class RateLimited(RecsvcError):
    """Raised by a `security.RateLimiter` when a key is over its budget."""

    status_code = 429
    error = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    detail: str
    field: str | None = None


_AT = re.compile(r" - at `(\$[^`]*)`$")
_LEAD_FIELD = re.compile(r"^([a-z_]+): ")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def field_of(message: str) -> tuple[str, str | None]:
    """Split a msgspec message into (detail, field path): "Expected `int` ... - at `$[2].quantity`" or, for
    checks in __post_init__, "timestamp: more than ... - at `$[2]`" -> "$[2].timestamp"."""
    path = None
    m = _AT.search(message)
    if m:
        path, message = m.group(1), message[: m.start()]
    named = _LEAD_FIELD.match(message) or _UNKNOWN.search(message)
    if named:
        path = f"{path or '$'}.{named.group(1)}"
    return message, path or "$"


def _body(status: int, error: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(ErrorBody(error=error, detail=detail, field=field), status_code=status, headers=headers)


def handle_validation(_: Request, exc: msgspec.ValidationError) -> Response[ErrorBody]:
    detail, field = field_of(str(exc))
    return _body(422, "validation", detail, field)


def handle_decode(request: Request, exc: msgspec.DecodeError) -> Response[ErrorBody]:
    detail, field = field_of(str(exc))
    if "UTF-8" in detail:  # msgspec: "Invalid UTF-8 encoded string"
        return _bad_utf8(request, detail)
    return _body(400, "malformed_body", f"not valid UTF-8 JSON: {detail}", field or "$")


_BAD_BYTE = re.compile("[\udc80-\udcff]")  # an invalid byte, as errors="surrogateescape" decodes it


def bad_utf8_field(body: bytes) -> tuple[str, bool] | None:
    """The JSON path of the first string holding bytes that are not UTF-8 (`$.customer_id`, `$[3].item_id`), and
    whether it is an object key rather than a value; None when the body does not parse even so. Runs only after a
    decode failed, so the happy path never pays for it."""
    try:
        doc = json.loads(body.decode("utf-8", errors="surrogateescape"))
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("$", doc)]
    while stack:  # depth first, in document order
        path, value = stack.pop()
        if isinstance(value, str):
            if _BAD_BYTE.search(value):
                return path, False
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            children = []
            for key, v in value.items():
                if _BAD_BYTE.search(key):
                    return path, True
                children.append((f"{path}.{key}", v))
            stack.extend(reversed(children))
    return None


def _bad_utf8(request: Request, detail: str) -> Response[ErrorBody]:
    """400 for bytes that are not UTF-8 inside a JSON string, naming the string's field when the body shows it."""
    body = ScopeState.from_scope(request.scope).body  # read (and cached) by the handler that failed
    found = bad_utf8_field(body) if body is not Empty else None
    if found is None:
        return _body(400, "malformed_body", f"not valid UTF-8: {detail}", "$")
    field, in_key = found
    what = "an object key in" if in_key else "the string at"
    return _body(400, "malformed_body", f"not valid UTF-8: {what} {field} holds bytes that are not UTF-8", field)


def handle_unicode(request: Request, exc: UnicodeDecodeError) -> Response[ErrorBody]:
    # msgspec raises this (not DecodeError) for some invalid UTF-8 inside a JSON string
    return _bad_utf8(request, f"byte {exc.start} of a string ({exc.reason})")


def handle_domain(_: Request, exc: RecsvcError) -> Response[ErrorBody]:
    return _body(exc.status_code, exc.error, exc.detail, exc.field, headers=exc.headers)


def handle_store_unavailable(_: Request, exc: StoreUnavailable) -> Response[ErrorBody]:
    log.warning("store unavailable: %s", exc)
    return _body(503, "store_unavailable", "the feature store did not answer; nothing was stored, retry later",
                 headers={"Retry-After": RETRY_AFTER_S})


def handle_litestar_validation(_: Request, exc: ValidationException) -> Response[ErrorBody]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    fields = [str(e.get("key")) for e in extra if isinstance(e, dict) and e.get("key")]
    msgs = [_plain(str(e.get("message"))) for e in extra if isinstance(e, dict) and e.get("message")]
    detail = "; ".join(f"{f}: {m}" for f, m in zip(fields, msgs)) or exc.detail
    return _body(400, "validation", detail, fields[0] if fields else None)


def _plain(message: str) -> str:
    if "matching regex" in message:
        return "must be 1-128 characters without whitespace, control characters, braces, * ? [ ]"
    return message


def handle_http(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    names = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
             413: "body_too_large", 429: "rate_limited"}
    return _body(status, names.get(status, "http_error"), exc.detail, headers=exc.headers)


def handle_unexpected(_: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error")
    return _body(500, "internal", "internal error; it has been logged")


EXCEPTION_HANDLERS = {
    msgspec.ValidationError: handle_validation,
    msgspec.DecodeError: handle_decode,
    UnicodeDecodeError: handle_unicode,
    RecsvcError: handle_domain,
    StoreUnavailable: handle_store_unavailable,
    ValidationException: handle_litestar_validation,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
