"""What every ``itloop`` command shares: the exit codes, failing in one line, the schema check.

A user's mistake ends in one line on stderr and an exit code that says what kind of mistake
(:data:`EXIT_CODES`, documented in docs/cli.md), never in a traceback. The schema check and the
upgrade live here because several command groups need them (``db``, ``serve``, the commands
that touch the database).
"""

from __future__ import annotations

from typing import NoReturn

import typer

from itloop.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1  # refused or failed: not found, already exists, a night that failed
EXIT_USAGE = 2  # what was typed or configured is invalid: option, argument, settings, night params
EXIT_SCHEMA = 3  # the database schema is missing, behind or unknown: run `itloop db upgrade`
EXIT_DATABASE = 4  # the database cannot be reached
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the command was refused or failed (not found, already exists, a night that failed)",
    EXIT_USAGE: "invalid input: an option or argument, a setting, a night parameter, a revision",
    EXIT_SCHEMA: "the database schema is missing, older than this code, or newer: see the message",
    EXIT_DATABASE: "the database cannot be reached",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """End the command: one red line on stderr and the exit ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One yellow line on stderr; the command goes on."""
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def where(settings: Settings) -> str:
    """The database, without credentials (the part after ``user:password@``)."""
    return settings.resolved_database_url.split("@")[-1]


def require_schema(settings: Settings) -> None:
    """Stop with what to run when the database is unreachable or its schema is not this code's."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.db.migrate import schema_advice, schema_state

    try:
        state = schema_state(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"cannot reach the database at {where(settings)}: {reason}", EXIT_DATABASE)
    if state != "current":
        fail(f"{schema_advice(state)} (database: {where(settings)})", EXIT_SCHEMA)


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate to ``revision`` and seed the bootstrap admin; a CLI failure (no traceback) otherwise."""
    from alembic.util import CommandError
    from sqlalchemy.exc import OperationalError

    from server.auth.service import ensure_admin
    from server.db import migrate
    from server.db.engine import session_scope

    settings.ensure_dirs()
    try:
        migrate.upgrade(settings.resolved_database_url, revision)
    except CommandError as exc:  # an unknown revision, a revision this code does not know
        fail(f"{exc} (known revisions: `itloop db history`)", EXIT_USAGE)
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0]
        fail(f"cannot reach the database at {where(settings)}: {reason}", EXIT_DATABASE)
    except Exception as exc:  # a CLI says what failed, no traceback
        fail(f"migration failed on {where(settings)}: {exc}")
    if settings.bootstrap_admin_token:
        with session_scope() as session:
            admin = ensure_admin(session=session, token=settings.bootstrap_admin_token)
        if admin is None:
            warn(
                "ITLOOP_BOOTSTRAP_ADMIN_TOKEN was revoked (or its user disabled); it stays refused. "
                "Remove it from the environment, or set a new one to seed a new admin token."
            )
