"""``itloop db``: the database schema (upgrade, downgrade, history, status, check).

A shared database is migrated once, by whoever deploys, so these are explicit commands; only
``itloop serve`` on the embedded SQLite default migrates by itself.
"""

from __future__ import annotations

import typer

from itloop.commands.common import EXIT_DATABASE, EXIT_USAGE, fail, require_schema, upgrade, where
from itloop.settings import get_settings

db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (creates the SQLite file on the embedded default), then seed the admin."""
    upgrade(get_settings(), revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="target revision, e.g. base or 0004")) -> None:
    """Roll the schema back."""
    from alembic.util import CommandError
    from sqlalchemy.exc import OperationalError

    from server.db import migrate

    settings = get_settings()
    try:
        migrate.downgrade(settings.resolved_database_url, revision)
    except CommandError as exc:
        fail(f"{exc} (known revisions: `itloop db history`)", EXIT_USAGE)
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0]
        fail(f"cannot reach the database at {where(settings)}: {reason}", EXIT_DATABASE)
    typer.echo(f"database at {revision}")


@db_app.command("history")
def db_history() -> None:
    """List the migrations this code knows, oldest first, and mark the database's current one."""
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from server.db import migrate

    settings = get_settings()
    try:
        current = migrate.database_revisions(settings.resolved_database_url) or frozenset()
    except SQLAlchemyError:
        current = frozenset()
    script = ScriptDirectory.from_config(migrate.alembic_config())
    for rev in reversed(list(script.walk_revisions())):
        mark = " (current)" if rev.revision in current else ""
        typer.echo(f"{rev.revision}  {rev.doc}{mark}")


@db_app.command("status")
def db_status() -> None:
    """Say whether the schema is current; exit 3 (run `itloop db upgrade`) when it is not."""
    require_schema(get_settings())
    typer.echo("the database schema is current")


@db_app.command("check")
def db_check() -> None:
    """Fail if the ORM models and the migrations disagree (alembic check)."""
    from server.db import migrate

    try:
        migrate.check(get_settings().resolved_database_url)
    except Exception as exc:
        fail(str(exc))
    typer.echo("no drift between models and migrations")
