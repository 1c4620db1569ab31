"""The one place that turns domain errors (and everything else) into JSON error responses.

The errors themselves live in :mod:`itloop.errors` (no web framework, so workers import them
too) and are re-exported here for the server's services; only this module builds HTTP
responses. Every 4xx/5xx the API returns is ``{"detail": "<what is wrong>"}`` (validation
errors add ``errors``): the ``ErrorBody`` model, which the OpenAPI document advertises for
every error (``server/openapi.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from itloop.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidUpload,
    ItloopError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from itloop.storage import StoreError

log = logging.getLogger(__name__)

__all__ = [
    "BodyTooLarge",
    "Conflict",
    "ErrorBody",
    "Forbidden",
    "InvalidInput",
    "InvalidUpload",
    "ItloopError",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationIssue",
    "error_response",
    "install_error_handlers",
]


class BodyTooLarge(StarletteHTTPException):
    """A request body streamed past the upload limit (``server.body_limit``).

    An ``HTTPException``, not an ``ItloopError``: it is raised from inside FastAPI's body parsing,
    which passes HTTP exceptions on but turns any other exception into a bare 400.
    """

    def __init__(self, limit: int, setting: str = "max_upload_bytes") -> None:
        super().__init__(
            status_code=413,
            detail=f"request body exceeds the limit of {limit} bytes for this route ({setting})",
            headers={"Connection": "close"},
        )


class ValidationIssue(BaseModel):
    """One problem request validation found."""

    loc: list[str | int] = Field(
        description="where: `body`, `query`, `path` or `header`, then field names and list indices"
    )
    msg: str = Field(description="what is wrong there")
    type: str = Field(description="pydantic's error type, e.g. `missing`, `int_parsing`")


class ErrorBody(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    detail: str = Field(description="what is wrong, in words")
    errors: list[ValidationIssue | str] | SkipJsonSchema[None] = Field(
        default=None,
        description="present when several things are wrong: one object per problem request "
        "validation found, or one string per rejected item of a list the route validates itself "
        "(e.g. presentation events)",
    )


def _body(detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, **extra}


def _format_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def error_response(exc: ItloopError) -> JSONResponse:
    """The response for an ``ItloopError`` (also sent by middleware that answers before routing)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(_body(exc.detail, **exc.extra), status_code=exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ItloopError)
    async def _itloop(_: Request, exc: ItloopError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(_body(detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(_body(_format_validation(errors), errors=errors), status_code=422)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        # Disk full, no permission, bucket gone: the server cannot do its job right now, and the
        # client's request was fine; say what failed instead of a bare 500.
        log.error("object store failure on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(_body(f"image store unavailable: {exc}"), status_code=503)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # A request value the database cannot hold or compare (NUL byte in text on PostgreSQL,
        # integer out of range): the client's input is wrong, not the server.
        log.info("rejected a value on %s %s: %s", request.method, request.url.path, exc.orig)
        reason = str(exc.orig).splitlines()[0][:200] if exc.orig is not None else "invalid value"
        return JSONResponse(_body(f"a value in the request is not valid here: {reason}"), status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # Connection lost (server restarted) or SQLite busy past its timeout: nothing wrong with
        # the request, so say "try again" (503) instead of a bare 500. The log keeps the traceback.
        log.error("database unavailable on %s %s", request.method, request.url.path, exc_info=exc)
        reason = str(exc.orig).splitlines()[0][:200] if exc.orig is not None else "unavailable"
        return JSONResponse(_body(f"database unavailable, try again: {reason}"), status_code=503)

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite's driver raises a bare OverflowError binding an integer beyond 64 bits.
        log.info("rejected a value on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(_body(f"a number in the request is out of range: {exc}"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal server error; the server log has the details"), status_code=500)
