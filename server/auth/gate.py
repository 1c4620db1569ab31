"""Authentication before the body: no valid token, no body read (401 at once).

FastAPI reads and parses a route's body (JSON, multipart) before it runs the route's dependencies,
the token check among them, so a client with no token could make the server buffer and parse a
100 MB JSON document only to be told 401 afterwards. This pure ASGI middleware checks the bearer
token of every ``/api/v1`` request with a body-carrying method (POST, PUT, PATCH, DELETE) before
anything reads a byte of the body, and answers 401 with ``Connection: close`` (the body stays
unread) when it is missing, unknown, revoked or disabled. The principal it found is handed to the
route (``scope["state"]["principal"]``), so :func:`server.deps.get_current_user` does not look the
token up a second time; role checks stay with the routes.

GET, HEAD and OPTIONS pass untouched: they carry no body worth refusing early, and the rig's hot
reads keep their one-dependency path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from itloop.errors import ItloopError, TooManyRequests, Unauthorized, Unavailable
from server.auth import service as auth_service
from server.auth.cache import AuthCache, Principal
from server.db.engine import new_session
from server.errors import error_response

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
PRINCIPAL_KEY = "principal"
BODY_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"

PrincipalLookup = Callable[[str], Principal]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def lookup_in_database(database_url: str) -> PrincipalLookup:
    """The default lookup: one short read-only session per cache miss."""

    def lookup(token_hash: str) -> Principal:
        session = new_session(database_url)
        try:
            return auth_service.principal_for_hash(session=session, token_hash=token_hash)
        finally:
            session.close()

    return lookup


async def authenticate(token: str | None, cache: AuthCache, lookup: PrincipalLookup) -> Principal:
    """The live principal of ``token`` (cached for the cache's TTL), or ``Unauthorized``."""
    if not token:
        raise Unauthorized(MISSING)
    token_hash = auth_service.hash_token(token)
    principal = cache.get(token_hash)
    if principal is None:
        principal = await run_in_threadpool(lookup, token_hash)
        cache.put(token_hash, principal)
    return principal


class AuthGateMiddleware:
    """401 before the body for body-carrying ``/api/v1`` requests without a valid token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in BODY_FREE_METHODS
            or not scope["path"].startswith(API_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        client = scope["client"][0] if scope.get("client") else "unknown"
        limiter = getattr(state, "auth_failures", None)  # server.auth.guard: failed checks per client
        retry = limiter.retry_after(client) if limiter is not None else None
        if retry is not None:
            await self._refuse(
                TooManyRequests(
                    f"too many failed authentications from {client}; try again in {retry} s",
                    retry_after=retry,
                ),
                scope,
                receive,
                send,
            )
            return
        try:
            principal = await authenticate(
                bearer_token(scope["headers"]), state.auth_cache, state.principal_lookup
            )
        except Unauthorized as exc:
            if limiter is not None:
                limiter.record_failure(client, f"{scope['method']} {scope['path']}")
            await self._refuse(exc, scope, receive, send)
            return
        except ItloopError as exc:
            await self._refuse(exc, scope, receive, send)
            return
        except SQLAlchemyError as exc:
            log.error("token lookup failed on %s %s: %s", scope["method"], scope["path"], exc)
            await self._refuse(Unavailable("database unavailable, try again"), scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(exc: ItloopError, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(exc)
        response.headers["Connection"] = "close"  # the body was not read: the connection cannot be reused
        await response(scope, receive, send)
