"""The one command-line entry point, ``itloop``.

Heavy imports (torch, the worker, the demo) happen inside commands so that
``itloop --help`` and ``itloop db upgrade`` start fast and never touch CUDA.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from itloop.logging import configure_logging
from itloop.settings import describe_settings_error, get_settings

app = typer.Typer(
    help="itloop: closed-loop lab server for adversarial sensitivity of IT sites.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
users_app = typer.Typer(help="Users (admin, experimenter, viewer, rig).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")

log = logging.getLogger("itloop")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    # Every command reads the settings first, so a refused configuration (weak production secrets,
    # SQLite in production, a malformed variable) ends here with its reasons, not a traceback.
    try:
        settings = get_settings()
    except ValidationError as exc:
        _fail(describe_settings_error(exc), code=2)
    configure_logging("DEBUG" if verbose else settings.log_level)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (creates the SQLite file on the embedded default), then seed the admin."""
    from server.auth.service import ensure_admin
    from server.db import migrate
    from server.db.engine import session_scope

    settings = get_settings()
    settings.ensure_dirs()
    try:
        migrate.upgrade(settings.resolved_database_url, revision)
    except Exception as exc:  # noqa: BLE001 - a CLI says what failed, no traceback
        _fail(f"migration failed on {settings.resolved_database_url.split('@')[-1]}: {exc}")
    if settings.bootstrap_admin_token:
        with session_scope() as session:
            admin = ensure_admin(session=session, token=settings.bootstrap_admin_token)
        if admin is None:
            _warn(
                "ITLOOP_BOOTSTRAP_ADMIN_TOKEN was revoked (or its user disabled); it stays refused. "
                "Remove it from the environment, or set a new one to seed a new admin token."
            )
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="target revision, e.g. base")) -> None:
    """Roll the schema back."""
    from server.db import migrate

    migrate.downgrade(get_settings().resolved_database_url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("check")
def db_check() -> None:
    """Fail if the ORM models and the migrations disagree (alembic check)."""
    from server.db import migrate

    try:
        migrate.check(get_settings().resolved_database_url)
    except Exception as exc:  # noqa: BLE001
        _fail(str(exc))
    typer.echo("no drift between models and migrations")


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="rig, experimenter, viewer or admin")] = "viewer",
    token: Annotated[bool, typer.Option(help="also issue a token and print it")] = True,
) -> None:
    """Create a user (and by default a first token)."""
    from server.auth import service
    from server.db.engine import session_scope
    from server.errors import ItloopError

    try:
        with session_scope() as session:
            user = service.create_user(session=session, name=name, role=role)
            plain = service.create_token(session=session, user=user, name="cli") if token else None
    except ItloopError as exc:
        _fail(exc.detail)
    typer.echo(f"created user {name} ({role})")
    if plain:
        typer.echo(plain)


@tokens_app.command("create")
def tokens_create(user: str, name: str = "cli") -> None:
    """Issue a new token for an existing user; printed once."""
    from server.auth import service
    from server.db.engine import session_scope
    from server.errors import ItloopError

    try:
        with session_scope() as session:
            plain = service.create_token(
                session=session, user=service.get_user(session=session, name=user), name=name
            )
    except ItloopError as exc:
        _fail(exc.detail)
    typer.echo(plain)


@tokens_app.command("revoke")
def tokens_revoke(prefix: str = typer.Argument(..., help="the token's first 8 characters")) -> None:
    """Revoke tokens by prefix."""
    from server.auth import service
    from server.db.engine import session_scope

    with session_scope() as session:
        n = service.revoke_token(session=session, prefix=prefix)
    typer.echo(f"revoked {n} token(s)")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    reload: bool = False,
) -> None:
    """Run the API server (uvicorn)."""
    import uvicorn

    settings = get_settings()
    settings.ensure_dirs()
    if not settings.redis_url and workers == 1:
        # Embedded mode runs jobs in this process: recover what a previous run left (at once,
        # then every ITLOOP_REAP_EVERY_S), and say in the database that this process is alive.
        from worker.liveness import start_embedded_housekeeping

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
    )


@app.command()
def worker(
    queues: Annotated[list[str] | None, typer.Option("--queue", "-q", help="queues to serve")] = None,
    burst: Annotated[bool, typer.Option(help="exit when the queues are empty")] = False,
) -> None:
    """Run a job worker: an RQ worker when ITLOOP_REDIS_URL is set, else a database-polling worker."""
    from worker.runner import run_worker

    run_worker(get_settings(), queues=queues or None, burst=burst)


@app.command()
def night(
    session: Annotated[str, typer.Option("--session", help="recording session id of the day")],
    wait: Annotated[bool, typer.Option(help="run/wait until the night finishes, with progress")] = True,
) -> None:
    """Start the nightly pipeline for a recording session."""
    from server.errors import ItloopError
    from worker.night import run_night_cli

    try:
        code = run_night_cli(get_settings(), session_id=session, wait=wait)
    except ItloopError as exc:
        _fail(exc.detail)
    raise typer.Exit(code)


@app.command()
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
        _fail(str(exc))
    typer.echo(
        f"backed up {summary.database} (schema {summary.revision}): {summary.rows} rows in "
        f"{summary.tables} tables, {summary.objects} objects ({summary.object_bytes} bytes) -> {dest}"
    )


@app.command()
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
        _fail(str(exc))
    typer.echo(
        f"restored {summary.database}: {summary.rows} rows in {summary.tables} tables (counts match the "
        f"backup), {summary.objects} objects ({summary.object_bytes} bytes); schema now {summary.revision}"
    )


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="days of the closed loop to simulate")] = 3,
    sites: Annotated[int, typer.Option(help="simulated IT sites")] = 12,
    out: Annotated[Path | None, typer.Option(help="report folder (default <data_dir>/demo-report)")] = None,
    seed: int = 0,
    brain: Annotated[
        str,
        typer.Option(help="family of the simulated population: orthogonal, natural, mix25, mix50, blur, v1"),
    ] = "orthogonal",
) -> None:
    """Run the closed loop on a simulated IT population and a virtual rig, then write a report."""
    from demo.run import run_demo
    from models.simulator import FAMILIES

    if brain not in FAMILIES:
        raise typer.BadParameter(
            f"unknown brain family {brain!r}; known: {', '.join(FAMILIES)}", param_hint="--brain"
        )
    report = run_demo(get_settings(), days=days, n_sites=sites, out=out, seed=seed, brain_family=brain)
    typer.echo(f"report: {report}")


@app.command()
def align(
    events: Annotated[
        Path,
        typer.Option(help="the rig's events: CSV, JSON list or NDJSON (event_id, image_sha256, onset_s)"),
    ],
    sync: Annotated[
        Path, typer.Option(help="sync pulses: CSV/Parquet (time_s[,stop_s]) or NWB (with --sync-series)")
    ],
    out: Annotated[Path, typer.Option(help="presentations CSV on the recorder's clock (uploadable as is)")],
    report: Annotated[Path | None, typer.Option(help="also write the fit report as JSON here")] = None,
    sync_series: Annotated[
        str | None, typer.Option(help="TimeSeries/TimeIntervals name in an NWB --sync")
    ] = None,
    refresh_hz: Annotated[
        float | None, typer.Option(help="the rig's refresh rate: flags late/dropped frames")
    ] = None,
    on_ms: Annotated[
        float | None, typer.Option(help="planned image duration when the events lack on_ms")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="the batch manifest JSON: planned durations by seq")
    ] = None,
    tolerance_ms: Annotated[
        float | None, typer.Option(help="pulse-to-event match tolerance (default 4)")
    ] = None,
) -> None:
    """Put the rig's presentation events on the recorder's clock from sync pulses.

    See docs/clock-alignment.md. Exit 2: an input file is unreadable; exit 1: the pulses cannot be
    matched to the events (too few, inconsistent, ambiguous).
    """
    from itloop.align import AlignInputError, run_align
    from models.clock_alignment import AlignmentError

    try:
        rep = run_align(
            events=events,
            sync=sync,
            out=out,
            report=report,
            sync_series=sync_series,
            refresh_hz=refresh_hz,
            on_ms=on_ms,
            manifest=manifest,
            tolerance_ms=tolerance_ms,
        )
    except AlignInputError as exc:
        _fail(str(exc), code=2)
    except AlignmentError as exc:
        _fail(f"cannot align: {exc}", code=1)
    rms = rep["residual_rms_ms"]
    typer.echo(
        f"aligned {rep['n_matched']}/{rep['n_events']} events to pulses: offset {rep['offset_s']:.6f} s, "
        f"drift {rep['drift_ppm']:+.2f} ppm, residual rms {rms:.3f} ms, max {rep['residual_max_ms']:.3f} ms; "
        f"{rep['n_missing_pulses']} missing and {rep['n_extra_pulses']} extra pulses; "
        f"{rep['n_late']} late, {rep['n_dropped']} dropped/short frames -> {out}"
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
