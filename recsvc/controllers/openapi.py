"""What /schema says beyond the handlers' signatures: the error answers, and the request bodies of the routes that read
the raw body (they decode it with msgspec themselves, the fast path, so Litestar cannot see their body type).

The error answers are described once, here, in the service's one error shape (`recsvc.errors.ErrorBody`): a handler
lists the ones particular to it with `responses=errors(404, 503)`, and `create_app` adds what every route shares (the
guard's 401, 403 and 429 where a scope is needed; 400 where there are parameters) with `document_common_errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.constants import RESERVED_KWARGS
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, Operation, RequestBody
from litestar.openapi.spec.media_type import OpenAPIMediaType

from recsvc.errors import ErrorBody

_ERRORS: dict[int, tuple[str, str, str]] = {  # status -> (when, the `error` value, an example detail)
    400: ("A bad query or path parameter (`validation`, `field` names it) or a body that is not UTF-8 JSON "
          "(`malformed_body`).", "validation", "k: must be at most 100"),
    401: ("No API key, or an unknown one (`unauthorized`); the answer carries `WWW-Authenticate: Bearer`.",
          "unauthorized", "missing API key: send 'Authorization: Bearer <key>'"),
    403: ("The API key lacks the scope this route needs (`forbidden`).", "forbidden",
          "this API key lacks the 'recs:read' scope"),
    404: ("Nothing with that id (`not_found`, `field` names the path parameter).", "not_found",
          "no catalog item 'X1'"),
    413: ("The body is over the size limit (`body_too_large`).", "body_too_large", "Request Entity Too Large"),
    422: ("A field of the body fails validation (`validation`, `field` is its JSON path, e.g. `$[3].timestamp`); "
          "nothing of the request was stored.", "validation", "Expected `int`, got `str`"),
    429: ("The API key is over its rate limit (`rate_limited`); `Retry-After` says in how many seconds a request "
          "would fit.", "rate_limited", "this API key is over its limit of 6000 requests per minute"),
    503: ("The feature store did not answer in time (`store_unavailable`); `Retry-After: 1`, nothing of the request "
          "was stored.", "store_unavailable", "the feature store did not answer; nothing was stored, retry later"),
}
GUARD_ERRORS = (401, 403, 429)  # what the scope guard and the rate limiter answer on any route that needs a scope


def error_response(status: int) -> ResponseSpec:
    when, error, detail = _ERRORS[status]
    field = {400: "k", 404: "item_id", 422: "$[0].timestamp"}.get(status)
    example = msgspec.to_builtins(ErrorBody(error=error, detail=detail, field=field))
    return ResponseSpec(data_container=ErrorBody, description=when, generate_examples=False,
                        examples=[Example(summary=error, value=example)])


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The documented error answers of a route (the `responses=` of its decorator)."""
    return {status: error_response(status) for status in statuses}


def document_common_errors(handler: HTTPRouteHandler, has_path_parameters: bool) -> None:
    """Called by `create_app` for every route: add the guard's answers (401, 403, 429) to a route that needs a scope,
    and describe the 400 of a route that takes parameters in the service's error shape (Litestar's default 400
    describes its own exception body, which the error handlers never send)."""
    extra: dict[int, ResponseSpec] = {}
    if handler.opt.get("scope") is not None:
        extra.update(errors(*GUARD_ERRORS))
    if has_path_parameters or _query_parameters(handler):
        extra[400] = error_response(400)
    if extra:
        handler.responses = {**extra, **(handler.responses or {})}


def _query_parameters(handler: HTTPRouteHandler) -> list[str]:
    dependencies = handler.resolve_dependencies()
    return [name for name in handler.parsed_fn_signature.parameters
            if name not in dependencies and name not in RESERVED_KWARGS]


def inline_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a type as msgspec validates it, with its definitions inlined (a request body schema must not
    point into `#/$defs`, which an OpenAPI document does not have)."""
    schema = msgspec.json.schema(tp)
    defs = schema.pop("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen:  # recursive types do not occur in the bodies; refuse rather than loop
                    raise ValueError(f"recursive type {name} cannot be inlined")
                return resolve(defs[name], (*seen, name))
            return {k: resolve(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


def request_body(tp: Any, description: str) -> type[Operation]:
    """An `operation_class` for a route that reads the raw body: the body is documented as `tp` (JSON), while the
    handler keeps decoding it itself."""
    schema = inline_schema(tp)

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema)},  # type: ignore[arg-type]
                description=description, required=True)

    return WithBody
