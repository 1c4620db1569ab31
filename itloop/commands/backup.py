"""``itloop backup`` and ``itloop restore``: a consistent copy of the database and the object store.

The work is in :mod:`itloop.backup`; these commands only report its summary or its refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itloop.commands.common import fail
from itloop.settings import get_settings


def backup(
    dest: Annotated[Path, typer.Argument(help="a new (or empty) folder to write the backup into")],
) -> None:
    """Back up the database and the object store, consistently, even while the server runs.

    SQLite: SQLite's online backup API (never a copy of the file); PostgreSQL: pg_dump (needs the
    PostgreSQL client tools). Then every object of the store. See docs/backup.md.
    """
    from itloop.backup import BackupError
    from itloop.backup import backup as run_backup

    try:
        summary = run_backup(get_settings(), dest)
    except BackupError as exc:
        fail(str(exc))
    typer.echo(
        f"backed up {summary.database} (schema {summary.revision}): {summary.rows} rows in "
        f"{summary.tables} tables, {summary.objects} objects ({summary.object_bytes} bytes) -> {dest}"
    )


def restore(
    src: Annotated[Path, typer.Argument(help="a folder written by `itloop backup`")],
    force: Annotated[bool, typer.Option("--force", help="replace a target that already holds data")] = False,
) -> None:
    """Restore a backup into the configured database and store (stop the server and workers first).

    Refuses a target that holds data unless --force. Upgrades the schema afterwards and checks
    the restored row counts against the backup's.
    """
    from itloop.backup import BackupError
    from itloop.backup import restore as run_restore

    settings = get_settings()
    settings.ensure_dirs()
    try:
        summary = run_restore(settings, src, force=force)
    except BackupError as exc:
        fail(str(exc))
    typer.echo(
        f"restored {summary.database}: {summary.rows} rows in {summary.tables} tables (counts match the "
        f"backup), {summary.objects} objects ({summary.object_bytes} bytes); schema now {summary.revision}"
    )
