"""Dependency aliases: a route's signature reads like its contract (who may call, what it uses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from itloop.settings import Settings, get_settings
from server.auth import service as auth_service
from server.auth.tables import Role, User
from server.db.engine import session_scope
from server.errors import Forbidden, Unauthorized


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; services flush, the route's success commits."""
    settings: Settings = request.app.state.settings
    with session_scope(settings.resolved_database_url) as session:
        if settings.is_sqlite and request.method not in ("GET", "HEAD", "OPTIONS"):
            session.connection(execution_options={"itloop_write": True})
        yield session


async def get_app_settings(request: Request) -> Settings:
    # async: no I/O, so no hop to the thread pool on every request
    return request.app.state.settings  # type: ignore[no-any-return]


# "function" scope: commit before the response is sent, so a client that acts on an answer
# (e.g. polls the night it just started) always sees what that answer reported, and a failed
# commit becomes an error response instead of a lost write behind a 2xx.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]

_bearer = HTTPBearer(auto_error=False, description="API token issued by `itloop tokens create`")


def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return auth_service.authenticate(session=session, token=credentials.credentials)


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(*roles: Role | str) -> Callable[[User], Awaitable[User]]:
    """Allow the listed roles (admin is always allowed)."""
    allowed = {str(r) for r in roles} | {Role.admin.value}

    async def _check(user: CurrentUser) -> User:  # async: a pure check needs no worker thread
        if user.role not in allowed:
            raise Forbidden(f"role {user.role!r} may not do this; needs one of {', '.join(sorted(allowed))}")
        return user

    return _check


RigUser = Annotated[User, Depends(require_role(Role.rig))]
ExperimenterUser = Annotated[User, Depends(require_role(Role.experimenter))]
ViewerUser = Annotated[User, Depends(require_role(Role.viewer, Role.experimenter))]
AdminUser = Annotated[User, Depends(require_role(Role.admin))]
# Reading batches is for rigs and for people who look at them.
BatchReader = Annotated[User, Depends(require_role(Role.rig, Role.viewer, Role.experimenter))]

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
