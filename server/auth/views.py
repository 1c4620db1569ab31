"""Who am I, and admin management of users and tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import service
from server.auth.schemas import RevokeResult, TokenCreate, TokenIssued, UserCreate, UserRead
from server.auth.tables import Role
from server.deps import AdminUser, CurrentUser, SessionDep, get_auth_cache

router = APIRouter(tags=["auth"])


@router.get("/me", response_model=UserRead, summary="The user that owns this token")
def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)


@router.post("/users", response_model=UserRead, status_code=201, summary="Create a user (admin)")
def create_user(body: UserCreate, session: SessionDep, _: AdminUser) -> UserRead:
    return UserRead.model_validate(service.create_user(session=session, name=body.name, role=body.role))


@router.post("/users/{name}/tokens", response_model=TokenIssued, status_code=201, summary="Issue a token")
def create_token(name: str, body: TokenCreate, session: SessionDep, _: AdminUser) -> TokenIssued:
    user = service.get_user(session=session, name=name)
    token = service.create_token(session=session, user=user, name=body.name)
    return TokenIssued(token=token, prefix=token[:8], user=user.name, role=Role(user.role))


@router.delete("/tokens/{prefix}", response_model=RevokeResult, summary="Revoke tokens by prefix (admin)")
def revoke(prefix: str, request: Request, session: SessionDep, _: AdminUser) -> RevokeResult:
    n = service.revoke_token(session=session, prefix=prefix)
    # Commit first, then forget: a request racing in between cannot re-cache the old state.
    session.commit()
    get_auth_cache(request).clear()
    return RevokeResult(revoked=n)
