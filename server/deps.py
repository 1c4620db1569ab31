"""Dependency aliases: a route's signature reads like its contract (who may call, what it uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from itloop.errors import Forbidden, TooManyRequests, Unauthorized
from itloop.settings import Settings, get_settings
from server.auth import service as auth_service
from server.auth.cache import AuthCache, Principal
from server.auth.gate import PRINCIPAL_KEY
from server.auth.guard import FailedAuthLimiter, LastUsed, touch
from server.auth.tables import Role
from server.db.engine import new_session
from server.paging import MAX_LIMIT

READ_METHODS = ("GET", "HEAD", "OPTIONS")


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per request; services flush, the route's success commits.

    Async, with the session made on the event loop (no I/O until first use) and the
    commit sent to a worker thread only when a transaction was begun: a request served
    from memory (cached token, known image) never touches the pool or a thread.
    """
    settings: Settings = request.app.state.settings
    write = request.method not in READ_METHODS
    session = new_session(settings.resolved_database_url, write=write)
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        elif session.identity_map:
            session.close()  # detach loaded objects; an untouched session holds nothing to release


async def get_app_settings(request: Request) -> Settings:
    # async: no I/O, so no hop to the thread pool on every request
    return request.app.state.settings


# "function" scope: commit before the response is sent, so a client that acts on an answer
# (e.g. polls the night it just started) always sees what that answer reported, and a failed
# commit becomes an error response instead of a lost write behind a 2xx.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# The paging parameters of every list route (server.paging.Page is the answer).
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
Offset = Annotated[int, Query(ge=0, description="how many matching items to skip")]

_bearer = HTTPBearer(auto_error=False, description="API token issued by `itloop tokens create`")


def get_auth_cache(request: Request) -> AuthCache:
    """The app's token cache (made by ``create_app``; one per process)."""
    return request.app.state.auth_cache


def client_address(request: Request) -> str:
    """The client's address as uvicorn reports it (behind a proxy: see FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


async def get_current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # A request with a body was authenticated before its body was read (server.auth.gate).
    gated: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if gated is not None:
        if credentials is not None and credentials.credentials:
            token_hash = auth_service.hash_token(credentials.credentials)
            if request.app.state.last_used.due(token_hash):
                await run_in_threadpool(touch, session, token_hash)
        return gated
    if credentials is None or not credentials.credentials:
        if "token" in request.query_params:
            raise Unauthorized(
                "tokens in the URL are not accepted (URLs end up in logs and browser history); "
                "send 'Authorization: Bearer <token>'"
            )
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    token_hash = auth_service.hash_token(credentials.credentials)
    state = request.app.state
    cache = get_auth_cache(request)
    principal = cache.get(token_hash)
    if principal is None:
        limiter: FailedAuthLimiter = state.auth_failures
        client = client_address(request)
        retry = limiter.retry_after(client)
        if retry is not None:
            raise TooManyRequests(
                f"too many failed authentications from {client}; try again in {retry} s", retry_after=retry
            )
        last_used: LastUsed = state.last_used
        if last_used.due(token_hash):
            await run_in_threadpool(touch, session, token_hash)
        try:
            principal = await run_in_threadpool(
                auth_service.principal_for_hash, session=session, token_hash=token_hash
            )
        except Unauthorized:
            limiter.record_failure(client, f"{request.method} {request.url.path}")
            raise
        cache.put(token_hash, principal)
    elif state.last_used.due(token_hash):
        await run_in_threadpool(touch, session, token_hash)
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def require_role(*roles: Role | str) -> Callable[[Principal], Awaitable[Principal]]:
    """Allow the listed roles (admin is always allowed)."""
    allowed = {str(r) for r in roles} | {Role.admin.value}

    async def _check(user: CurrentUser) -> Principal:  # async: a pure check needs no worker thread
        if user.role not in allowed:
            raise Forbidden(f"role {user.role!r} may not do this; needs one of {', '.join(sorted(allowed))}")
        return user

    return _check


RigUser = Annotated[Principal, Depends(require_role(Role.rig))]
ExperimenterUser = Annotated[Principal, Depends(require_role(Role.experimenter))]
ViewerUser = Annotated[Principal, Depends(require_role(Role.viewer, Role.experimenter))]
AdminUser = Annotated[Principal, Depends(require_role(Role.admin))]
# Reading batches is for rigs and for people who look at them.
BatchReader = Annotated[Principal, Depends(require_role(Role.rig, Role.viewer, Role.experimenter))]

__all__ = [
    "AdminUser",
    "BatchReader",
    "CurrentUser",
    "ExperimenterUser",
    "RigUser",
    "SessionDep",
    "SettingsDep",
    "ViewerUser",
    "get_settings",
    "require_role",
]
