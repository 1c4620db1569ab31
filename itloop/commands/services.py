"""``itloop serve`` and ``itloop worker``: the long-running processes.

Both log as services (``ITLOOP_LOG_LEVEL``) rather than as interactive commands, and both refuse
a database whose schema is not this code's; ``serve`` on the embedded default migrates it and
runs the embedded jobs' housekeeping.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from itloop.commands.common import EXIT_DATABASE, EXIT_SCHEMA, fail, require_schema, upgrade, where
from itloop.logging import configure_service_logging
from itloop.settings import get_settings

log = logging.getLogger("itloop")


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    reload: bool = False,
) -> None:
    """Run the API server (uvicorn).

    On the embedded default (no ITLOOP_DATABASE_URL: SQLite under ITLOOP_DATA_DIR) a database
    without a schema, or with an older one, is migrated first; any other database must be
    upgraded with `itloop db upgrade` (exit 3 says so), since a shared database is migrated once,
    by whoever deploys, not by whichever server starts first.
    """
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from server.app import KEEP_ALIVE_S
    from server.db.migrate import schema_advice, schema_state

    settings = get_settings()
    settings.ensure_dirs()
    configure_service_logging(settings.log_level)
    try:
        state = schema_state(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"cannot reach the database at {where(settings)}: {reason}", EXIT_DATABASE)
    if state in ("missing", "behind") and settings.database_url is None:
        upgrade(settings)
        log.warning("migrated the embedded database (%s) to the current schema", where(settings))
    elif state != "current":
        fail(f"{schema_advice(state)} (database: {where(settings)})", EXIT_SCHEMA)
    # Every table mapped, on this thread, before the housekeeping threads query: a mapper configured
    # from another thread while this one is still importing a tables module fails for good.
    from sqlalchemy.orm import configure_mappers

    import server.db.all_tables  # noqa: F401

    configure_mappers()
    if not settings.redis_url and workers == 1:
        # Embedded mode runs jobs in this process: recover what a previous run left (at once,
        # then every ITLOOP_REAP_EVERY_S), and say in the database that this process is alive.
        from jobs.liveness import start_embedded_housekeeping

        start_embedded_housekeeping(settings)
    typer.echo(
        f"itloop API on http://{host}:{port}/api/v1/docs (database: "
        f"{settings.resolved_database_url.split('@')[-1]})"
    )
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def worker(
    queues: Annotated[list[str] | None, typer.Option("--queue", "-q", help="queues to serve")] = None,
    burst: Annotated[bool, typer.Option(help="exit when the queues are empty")] = False,
) -> None:
    """Run a job worker: an RQ worker when ITLOOP_REDIS_URL is set, else a database-polling worker."""
    from jobs.runner import run_worker

    settings = get_settings()
    configure_service_logging(settings.log_level)
    require_schema(settings)
    run_worker(settings, queues=queues or None, burst=burst)
