"""The one command-line entry point, ``itloop``.

Heavy imports (torch, the worker, the demo) happen inside commands so that
``itloop --help`` and ``itloop db upgrade`` start fast and never touch CUDA.

A user's mistake ends in one line on stderr and an exit code that says what kind of mistake
(:data:`EXIT_CODES`, documented in docs/cli.md), never in a traceback; ``-v`` shows tracebacks of
failures that are not the user's.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from itloop.logging import configure_console, configure_service_logging
from itloop.settings import Settings, describe_settings_error, get_settings

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
models_app = typer.Typer(
    help="Candidate models and their checkpoint files (`itloop models` lists them).",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")

log = logging.getLogger("itloop")
_verbosity = 0


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def _where(settings: Settings) -> str:
    """The database, without credentials (the part after ``user:password@``)."""
    return settings.resolved_database_url.split("@")[-1]


def _require_schema(settings: Settings) -> None:
    """Stop with what to run when the database is unreachable or its schema is not this code's."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.db.migrate import schema_advice, schema_state

    try:
        state = schema_state(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        _fail(f"cannot reach the database at {_where(settings)}: {reason}", EXIT_DATABASE)
    if state != "current":
        _fail(f"{schema_advice(state)} (database: {_where(settings)})", EXIT_SCHEMA)


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
        _fail(describe_settings_error(exc), code=EXIT_USAGE)
    _verbosity = verbose
    configure_console(verbose)


def _upgrade(settings: Settings, revision: str = "head") -> None:
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
        _fail(f"{exc} (known revisions: `itloop db history`)", EXIT_USAGE)
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0]
        _fail(f"cannot reach the database at {_where(settings)}: {reason}", EXIT_DATABASE)
    except Exception as exc:  # noqa: BLE001 - a CLI says what failed, no traceback
        _fail(f"migration failed on {_where(settings)}: {exc}")
    if settings.bootstrap_admin_token:
        with session_scope() as session:
            admin = ensure_admin(session=session, token=settings.bootstrap_admin_token)
        if admin is None:
            _warn(
                "ITLOOP_BOOTSTRAP_ADMIN_TOKEN was revoked (or its user disabled); it stays refused. "
                "Remove it from the environment, or set a new one to seed a new admin token."
            )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (creates the SQLite file on the embedded default), then seed the admin."""
    _upgrade(get_settings(), revision)
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
        _fail(f"{exc} (known revisions: `itloop db history`)", EXIT_USAGE)
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0]
        _fail(f"cannot reach the database at {_where(settings)}: {reason}", EXIT_DATABASE)
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
    _require_schema(get_settings())
    typer.echo("the database schema is current")


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

    _require_schema(get_settings())
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

    _require_schema(get_settings())
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
    """Revoke tokens by prefix (exit 1 when no active token has it)."""
    from server.auth import service
    from server.db.engine import session_scope

    _require_schema(get_settings())
    with session_scope() as session:
        n = service.revoke_token(session=session, prefix=prefix)
    if n == 0:
        _fail(
            f"no active token starts with {prefix!r} (the prefix is the first 8 characters printed "
            "when the token was made; a revoked token stays revoked)"
        )
    typer.echo(f"revoked {n} token(s)")


@app.command()
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

    from server.db.migrate import schema_advice, schema_state

    settings = get_settings()
    settings.ensure_dirs()
    configure_service_logging(settings.log_level)
    try:
        state = schema_state(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        _fail(f"cannot reach the database at {_where(settings)}: {reason}", EXIT_DATABASE)
    if state in ("missing", "behind") and settings.database_url is None:
        _upgrade(settings)
        log.warning("migrated the embedded database (%s) to the current schema", _where(settings))
    elif state != "current":
        _fail(f"{schema_advice(state)} (database: {_where(settings)})", EXIT_SCHEMA)
    # Every table mapped, on this thread, before the housekeeping threads query: a mapper configured
    # from another thread while this one is still importing a tables module fails for good.
    from sqlalchemy.orm import configure_mappers

    import server.db.all_tables  # noqa: F401

    configure_mappers()
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

    settings = get_settings()
    configure_service_logging(settings.log_level)
    _require_schema(settings)
    run_worker(settings, queues=queues or None, burst=burst)


def _parse_param(item: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON when it parses (``4``, ``[1, 2]``, ``false``), else text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        _fail(f"--param {item!r}: expected key=value (e.g. --param restarts=8)", EXIT_USAGE)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _read_params_file(path: Path) -> dict[str, Any]:
    """A JSON or YAML object of night parameters (by suffix: .json, .yaml/.yml)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        _fail(f"--params-file {path}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        _fail(
            f"--params-file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}",
            EXIT_USAGE,
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(
            f"--params-file {path}: expected an object of night parameters, got {type(data).__name__}",
            EXIT_USAGE,
        )
    return data


def night_params(params: list[str], params_file: Path | None) -> dict[str, Any]:
    """The night's parameters from a file and ``--param`` (which win), checked against NightConfig.

    The same checks ``POST /nights`` makes, here before anything starts: unknown names and
    impossible values are refused naming the parameter (exit 2).
    """
    from worker.steps.config import NightConfig

    merged: dict[str, Any] = _read_params_file(params_file) if params_file is not None else {}
    merged.update(dict(_parse_param(p) for p in params))
    unknown = NightConfig.unknown_keys(merged)
    if unknown:
        _fail(
            f"unknown night parameter(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(NightConfig.model_fields))} (docs/night-parameters.md)",
            EXIT_USAGE,
        )
    try:
        cfg = NightConfig.from_params(merged, get_settings().night_defaults)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        _fail(f"night parameters: {problems}", EXIT_USAGE)
    from server.errors import InvalidInput
    from worker.steps.candidates import resolve

    for spec in cfg.candidates or []:
        try:
            resolve(spec)
        except InvalidInput as exc:
            _fail(exc.detail, EXIT_USAGE)
    return merged


@app.command()
def night(
    session: Annotated[str, typer.Option("--session", help="recording session id of the day")],
    wait: Annotated[bool, typer.Option(help="run/wait until the night finishes, with progress")] = True,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="a night parameter as key=value (JSON values), repeatable"),
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params-file", help="night parameters as a JSON or YAML object")
    ] = None,
) -> None:
    """Start the nightly pipeline for a recording session (parameters: docs/night-parameters.md)."""
    from server.errors import InvalidInput, ItloopError
    from worker.night import run_night_cli

    settings = get_settings()
    params = night_params(param or [], params_file)
    _require_schema(settings)
    try:
        code = run_night_cli(settings, session_id=session, wait=wait, params=params)
    except InvalidInput as exc:
        _fail(exc.detail, EXIT_USAGE)
    except ItloopError as exc:
        _fail(exc.detail)
    raise typer.Exit(code)


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List candidate models: backbone, layer, checkpoint file, whether it is present (sha256)."""
    if ctx.invoked_subcommand is not None:
        return
    from itloop.models import candidate_rows

    settings = get_settings()
    rows = candidate_rows(settings.data_dir)
    width = max(len(r.name) for r in rows)
    typer.echo(f"checkpoints folder: {(settings.data_dir / 'checkpoints').resolve()}")
    for r in rows:
        default = " (default)" if r.default else ""
        if r.checkpoint is None:
            state = "no checkpoint needed"
        elif r.sha256 is None:
            state = f"{r.checkpoint}: MISSING (itloop models import FILE --name {r.name})"
        else:
            state = f"{r.checkpoint}: present, sha256 {r.sha256}"
        typer.echo(f"{r.name:<{width}}  {r.backbone}/{r.layer}  {state}{default}")


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="a checkpoint file (state dict; MadryLab files work)")],
    name: Annotated[str, typer.Option("--name", help="the candidate it is for, e.g. resnet50")],
    force: Annotated[bool, typer.Option("--force", help="replace a different file already in place")] = False,
) -> None:
    """Copy a checkpoint into <data_dir>/checkpoints under the name the candidate expects.

    The file is loaded into the candidate's backbone first: a file that is unreadable or made for
    another architecture is refused and nothing is copied.
    """
    from itloop.models import ImportRefused, import_checkpoint

    try:
        dest, digest, replaced = import_checkpoint(get_settings().data_dir, path, name=name, force=force)
    except ImportRefused as exc:
        _fail(str(exc), exc.exit_code)
    verb = "replaced" if replaced else "imported"
    typer.echo(f"{verb} {dest} (sha256 {digest}) for {name}")


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
