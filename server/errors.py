"""Domain exceptions and the one place that turns them (and everything else) into JSON errors.

Services raise these; only this module knows HTTP status codes. Every 4xx/5xx the
API returns is ``{"detail": "<what is wrong>"}`` (validation errors add ``errors``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ItloopError(Exception):
    """Base of every error a client may be told about."""

    status_code = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(ItloopError):
    status_code = 422


class InvalidUpload(ItloopError):
    status_code = 422


class NotFound(ItloopError):
    status_code = 404


class Conflict(ItloopError):
    status_code = 409


class Unauthorized(ItloopError):
    status_code = 401


class Forbidden(ItloopError):
    status_code = 403


class PayloadTooLarge(ItloopError):
    status_code = 413


class Unavailable(ItloopError):
    status_code = 503


def _body(detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, **extra}


def _format_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ItloopError)
    async def _itloop(_: Request, exc: ItloopError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(_body(exc.detail, **exc.extra), status_code=exc.status_code, headers=headers)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal server error; the server log has the details"), status_code=500)
