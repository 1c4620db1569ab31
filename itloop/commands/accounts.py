"""``itloop users`` and ``itloop tokens``: accounts and their API tokens, made from the shell.

The first admin and every rig account are made here (one rig account per rig, named after its
``rig_id``); a token is printed once and only its hash is stored.
"""

from __future__ import annotations

from typing import Annotated

import typer

from itloop.commands.common import fail, require_schema
from itloop.settings import get_settings

users_app = typer.Typer(help="Users (admin, experimenter, viewer, rig).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="rig, experimenter, viewer or admin")] = "viewer",
    token: Annotated[bool, typer.Option(help="also issue a token and print it")] = True,
) -> None:
    """Create a user (and by default a first token)."""
    from itloop.errors import ItloopError
    from server.auth import service
    from server.db.engine import session_scope

    require_schema(get_settings())
    try:
        with session_scope() as session:
            user = service.create_user(session=session, name=name, role=role)
            plain = service.create_token(session=session, user=user, name="cli") if token else None
    except ItloopError as exc:
        fail(exc.detail)
    typer.echo(f"created user {name} ({role})")
    if plain:
        typer.echo(plain)


@tokens_app.command("create")
def tokens_create(user: str, name: str = "cli") -> None:
    """Issue a new token for an existing user; printed once."""
    from itloop.errors import ItloopError
    from server.auth import service
    from server.db.engine import session_scope

    require_schema(get_settings())
    try:
        with session_scope() as session:
            plain = service.create_token(
                session=session, user=service.get_user(session=session, name=user), name=name
            )
    except ItloopError as exc:
        fail(exc.detail)
    typer.echo(plain)


@tokens_app.command("revoke")
def tokens_revoke(prefix: str = typer.Argument(..., help="the token's first 8 characters")) -> None:
    """Revoke tokens by prefix (exit 1 when no active token has it)."""
    from server.auth import service
    from server.db.engine import session_scope

    require_schema(get_settings())
    with session_scope() as session:
        n = service.revoke_token(session=session, prefix=prefix)
    if n == 0:
        fail(
            f"no active token starts with {prefix!r} (the prefix is the first 8 characters printed "
            "when the token was made; a revoked token stays revoked)"
        )
    typer.echo(f"revoked {n} token(s)")
