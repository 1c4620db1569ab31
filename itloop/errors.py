"""Domain errors: what a service may tell a client went wrong, with no web framework attached.

Services, the job package and the night raise these; ``server/errors.py`` alone maps them to
HTTP responses (each class's ``status_code`` is the status it maps to), and the CLI prints their
``detail``. Keeping them FastAPI-free lets worker processes import them without the web stack.
"""

from __future__ import annotations

from typing import Any


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


class NightActive(Conflict):
    """The session already has an active night: a 409, and for an automatic start nothing wrong
    (the lab started its night itself), so callers can tell it from other refusals."""


class Unauthorized(ItloopError):
    status_code = 401


class Forbidden(ItloopError):
    status_code = 403


class PayloadTooLarge(ItloopError):
    status_code = 413


class TooManyRequests(ItloopError):
    """The client must wait ``retry_after`` seconds (sent as ``Retry-After``)."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(ItloopError):
    status_code = 503
