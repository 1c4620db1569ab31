"""The one command-line entry point, ``itloop``: one typer app assembled from :mod:`itloop.commands`.

Heavy imports (torch, the worker, the demo) happen inside commands so that
``itloop --help`` and ``itloop db upgrade`` start fast and never touch CUDA.

A user's mistake ends in one line on stderr and an exit code that says what kind of mistake
(:data:`EXIT_CODES`, documented in docs/cli.md), never in a traceback; ``-v`` shows tracebacks of
failures that are not the user's. The commands live one group per module in
:mod:`itloop.commands`; this module holds the app, its global options and :func:`main`.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from itloop.commands.accounts import tokens_app, users_app
from itloop.commands.align import align
from itloop.commands.backup import backup, restore
from itloop.commands.common import (
    EXIT_CODES,
    EXIT_DATABASE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SCHEMA,
    EXIT_USAGE,
    fail,
)
from itloop.commands.db import db_app
from itloop.commands.demo import demo
from itloop.commands.models import models_app
from itloop.commands.night import night, night_params
from itloop.commands.services import serve, worker
from itloop.logging import configure_console
from itloop.settings import describe_settings_error, get_settings

__all__ = [
    "EXIT_CODES",
    "EXIT_DATABASE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SCHEMA",
    "EXIT_USAGE",
    "app",
    "main",
    "night_params",
]

app = typer.Typer(
    help="itloop: closed-loop lab server for adversarial sensitivity of IT sites.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(models_app, name="models")
for command in (serve, worker, night, backup, restore, demo, align):
    app.command()(command)

log = logging.getLogger("itloop")
_verbosity = 0


@app.callback()
def _setup(
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="-v: every INFO line and tracebacks; -vv: DEBUG"),
    ] = 0,
) -> None:
    # Every command reads the settings first, so a refused configuration (weak production secrets,
    # SQLite in production, a malformed variable) ends here with its reasons, not a traceback.
    global _verbosity
    try:
        get_settings()
    except ValidationError as exc:
        fail(describe_settings_error(exc), code=EXIT_USAGE)
    _verbosity = verbose
    configure_console(verbose)


def main() -> None:
    """Run the CLI; the database failures no command foresaw still end in one line, not a traceback."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        if _verbosity:
            log.exception("database error")
        missing_table = "no such table" in reason or "does not exist" in reason
        typer.secho(
            f"error: database: {reason}"
            + (" (the schema is missing or old: run `itloop db upgrade`)" if missing_table else ""),
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(EXIT_SCHEMA if missing_table else EXIT_DATABASE)


if __name__ == "__main__":
    main()
