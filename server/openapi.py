"""The OpenAPI document, told the truth about errors.

FastAPI documents a 422 ``HTTPValidationError`` (``detail`` a list) on every route that takes
input, but ``server/errors.py`` answers every error with ``ErrorBody`` (``detail`` a string, plus
``errors`` for validation). ``document_errors`` rewrites the generated document once: each 422
refers to ``ErrorBody``, operations that need a token also list 401, 403 and 429 (the failed-login
limit of ``server.auth.guard``), operations with a path parameter list 404, operations whose body
is bounded list 413 (``server.body_limit``), and FastAPI's ``HTTPValidationError`` and
``ValidationError`` schemas are dropped.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from server.body_limit import UNREAD_BODY_METHODS
from server.errors import ErrorBody

ERROR_SCHEMA = "ErrorBody"
ERROR_REF = f"#/components/schemas/{ERROR_SCHEMA}"
FASTAPI_SCHEMAS = ("HTTPValidationError", "ValidationError")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DESCRIPTIONS = {
    "401": "no bearer token, or an unknown, revoked or disabled one",
    "403": "the token's role may not do this",
    "404": "nothing by that name or id",
    "413": "the request body is larger than the route's limit (`max_upload_bytes` for file uploads, "
    "`max_json_bytes` for every other body)",
    "422": "the request is not valid; request validation lists each problem in `errors`",
    "429": "too many failed token checks from this client address; retry after `Retry-After` seconds",
}
FASTAPI_DEFAULT_DESCRIPTIONS = {"Validation Error"}


def _error_codes(method: str, operation: dict[str, Any]) -> set[str]:
    """The error statuses an operation can answer with, judging by what it takes."""
    codes = {"422"} if "422" in operation.get("responses", {}) else set()
    if operation.get("security"):
        # Every route behind a token; a role check may also refuse (403) on most of them, and a
        # client past the failed-login limit is refused (429, server.auth.guard).
        codes |= {"401", "403", "429"}
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        codes.add("404")
    if method.upper() not in UNREAD_BODY_METHODS:
        codes.add("413")
    return codes


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every documented error response an ``ErrorBody`` (in place; returns ``schema``)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components[ERROR_SCHEMA] = body
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for code in sorted(_error_codes(method, operation)):
                response = responses.setdefault(code, {})
                description = response.get("description")
                if not description or description in FASTAPI_DEFAULT_DESCRIPTIONS:
                    response["description"] = DESCRIPTIONS[code]
                response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
            operation["responses"] = dict(sorted(responses.items()))
    for name in FASTAPI_SCHEMAS:  # in this order: HTTPValidationError refers to ValidationError
        if name in components and f'"#/components/schemas/{name}"' not in json.dumps(schema):
            del components[name]
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve ``document_errors`` of FastAPI's generated document (built once, then cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
