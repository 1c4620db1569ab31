"""Users and tokens: create, authenticate, revoke. Tokens are random and stored as HMAC hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound, Unauthorized
from itloop.settings import get_settings
from server.auth.cache import Principal
from server.auth.tables import ApiToken, Role, User
from server.db.base import as_utc, utcnow

TOKEN_PREFIX = "itl_"


def hash_token(token: str) -> str:
    """Keyed hash so a leaked table is useless without the pepper from settings."""
    key = get_settings().token_pepper.encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def create_user(*, session: Session, name: str, role: str) -> User:
    """Create a user with one of the four roles."""
    if role not in Role.__members__:
        raise InvalidInput(f"unknown role {role!r}; expected one of {', '.join(Role.__members__)}")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def create_token(*, session: Session, user: User, name: str = "", token: str | None = None) -> str:
    """Issue a token; the plain value is returned once and never stored."""
    plain = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    if len(plain) < 16:
        raise InvalidInput("tokens must be at least 16 characters")
    session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_token(plain), prefix=plain[:8]))
    session.flush()
    return plain


def authenticate(*, session: Session, token: str) -> User:
    """Return the token's user, or raise Unauthorized without saying which check failed."""
    return session.get_one(User, principal_for_hash(session=session, token_hash=hash_token(token)).id)


_PRINCIPAL = (
    select(User.id, User.name, User.role, User.disabled, User.created_at)
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(ApiToken.revoked_at.is_(None), User.disabled.is_(False))
)


def principal_for_hash(*, session: Session, token_hash: str) -> Principal:
    """The live principal of a hashed token in one query (the API's per-request check)."""
    row = session.execute(_PRINCIPAL.where(ApiToken.token_hash == token_hash)).one_or_none()
    if row is None:
        raise Unauthorized("invalid or revoked token")
    uid, name, role, disabled, created = row
    return Principal(uid, name, role, disabled, as_utc(created))


def revoke_token(*, session: Session, token: str | None = None, prefix: str | None = None) -> int:
    """Revoke by plain value or by the 8-character prefix shown at creation; returns how many."""
    query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    if token is not None:
        query = query.where(ApiToken.token_hash == hash_token(token))
    elif prefix is not None:
        query = query.where(ApiToken.prefix == prefix)
    else:
        raise InvalidInput("give a token or a prefix to revoke")
    rows = list(session.scalars(query))
    for row in rows:
        row.revoked_at = utcnow()
    session.flush()
    return len(rows)


def ensure_admin(*, session: Session, token: str, name: str = "admin") -> User | None:
    """Idempotently make sure an admin holding ``token`` exists (prestart seeding).

    Returns None, changing nothing, when the token is already known but no longer works (it
    was revoked, or its user disabled): a revocation is a decision a person made, so a deploy
    that still carries the old ``ITLOOP_BOOTSTRAP_ADMIN_TOKEN`` must neither undo it nor fail
    on the stored hash (the caller warns instead).
    """
    token_hash = hash_token(token)
    try:
        return session.get_one(User, principal_for_hash(session=session, token_hash=token_hash).id)
    except Unauthorized:
        pass
    if session.scalar(select(ApiToken.id).where(ApiToken.token_hash == token_hash)) is not None:
        return None
    user = session.scalar(select(User).where(User.name == name)) or create_user(
        session=session, name=name, role=Role.admin
    )
    create_token(session=session, user=user, name="bootstrap", token=token)
    return user
