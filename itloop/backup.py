"""``itloop backup`` / ``itloop restore``: the database and the object store, consistently.

A backup is a folder::

    backup.json       what was backed up: format, time, database kind, schema revision,
                      rows per table, objects and bytes
    itloop.db         SQLite: a copy made with SQLite's online backup API
    itloop.pgdump     PostgreSQL: ``pg_dump --format=custom``
    store/<key>       every object of the store (images, model artifacts), byte for byte

Order is what makes it consistent while the server and workers keep writing: the database is
copied first, as one snapshot (SQLite's backup API copies all pages in one step under one read
transaction; pg_dump reads one repeatable-read snapshot), then the store. Every object is written
before the row that names it commits and is never changed afterwards (content-addressed), so every
object the snapshot refers to is already in the store when the copy of the store starts. Objects
written later are copied too or not; either way nothing in the backup points to a missing object.
A raw copy of ``itloop.db`` while serving is *not* a backup: it can miss the WAL file's
committed pages (the lost batch of issue 17).

Restore refuses a target that holds data (any row in any table, any object in the store) unless
forced, copies the store first and the database last (so a row never points to a missing object
even if the restore is interrupted), upgrades the schema to this release, and checks the row counts
against ``backup.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, inspect, select, table, text
from sqlalchemy.engine import URL, Connection, make_url

from itloop.settings import Settings
from itloop.storage import ObjectStore, open_store
from models.files import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "backup.json"
SQLITE_FILE = "itloop.db"
PG_FILE = "itloop.pgdump"
STORE_DIR = "store"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass
class Summary:
    """What a backup or restore covered (printed by the CLI)."""

    database: str
    revision: str | None
    rows: int
    tables: int
    objects: int
    object_bytes: int


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"cannot back up an in-memory SQLite database ({url})")
    return Path(database)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string for pg_dump/pg_restore, with the password in the environment.

    Kept out of the command line, where any local user could read it in the process list.
    """
    parsed: URL = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise BackupError(
            f"{cmd[0]} is not on PATH: install the PostgreSQL client tools (the server's major version)"
        )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def _counts(conn: Connection) -> dict[str, int]:
    names = sorted(inspect(conn).get_table_names())
    return {n: int(conn.scalar(select(func.count()).select_from(table(n))) or 0) for n in names}


def table_counts(url: str) -> dict[str, int]:
    """Rows per table of the database at ``url`` (every table, the schema's version included)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return _counts(conn)
    finally:
        engine.dispose()


def _pg_dump(url: str, dump: Path) -> dict[str, int]:
    """``pg_dump`` of one exported snapshot, and the row counts of that same snapshot.

    The counts are read in the transaction whose snapshot pg_dump uses (``--snapshot``), so they
    are exactly what the dump holds even while the server writes.
    """
    conninfo, env = _libpq(url)
    engine = create_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            snapshot = conn.scalar(text("SELECT pg_export_snapshot()"))
            cmd = ["pg_dump", "--format=custom", "--no-owner", f"--snapshot={snapshot}"]
            _run([*cmd, "--file", str(dump), conninfo], env, "pg_dump")
            return _counts(conn)
    finally:
        engine.dispose()


def _revision(counts: dict[str, int], url: str) -> str | None:
    if "alembic_version" not in counts:
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()


def _write_file(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, prefix=".part-")


def _copy_store_out(store: ObjectStore, folder: Path) -> tuple[int, int]:
    n = size = 0
    for key in store.list(""):
        try:
            data = store.get(key)
        except KeyError:
            continue  # deleted while listing: it was not referenced by the snapshot's rows
        _write_file(folder / key, data)
        n, size = n + 1, size + len(data)
    return n, size


def _backup_files(folder: Path) -> list[tuple[str, Path]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".part-")
    )


def backup(settings: Settings, dest: Path) -> Summary:
    """Write a consistent backup of the database and the store into ``dest`` (new or empty)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty folder; give a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if settings.is_sqlite:
        source = _sqlite_path(url)
        if not source.is_file():
            raise BackupError(f"no database at {source}; nothing to back up")
        copy = dest / SQLITE_FILE
        src = sqlite3.connect(source, timeout=60)  # read only by use; mode=ro cannot open a WAL file alone
        dst = sqlite3.connect(copy)
        try:
            with dst:
                src.backup(dst)  # pages=-1: the whole database in one step, one consistent snapshot
        finally:
            dst.close()
            src.close()
        counts = table_counts(f"sqlite:///{copy.resolve()}")
        revision = _revision(counts, f"sqlite:///{copy.resolve()}")
        kind = "sqlite"
    else:
        counts = _pg_dump(url, dest / PG_FILE)
        revision = _revision(counts, url)  # one row, changed only by `itloop db upgrade`
        kind = "postgresql"
    # Only now the store: every object the snapshot's rows name was written before they committed.
    objects, object_bytes = _copy_store_out(open_store(settings.resolved_store_url), dest / STORE_DIR)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "database": kind,
        "revision": revision,
        "counts": counts,
        "objects": objects,
        "object_bytes": object_bytes,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Summary(kind, revision, sum(counts.values()), len(counts), objects, object_bytes)


def _has_data(url: str, store: ObjectStore) -> str | None:
    """Why the target is not empty, or None."""
    counts = table_counts(url) if _database_exists(url) else {}
    full = {n: c for n, c in counts.items() if c and n != "alembic_version"}
    if full:
        shown = ", ".join(f"{n} ({c})" for n, c in sorted(full.items())[:5])
        return f"the database holds rows: {shown}"
    if store.list(""):
        return "the object store holds objects"
    return None


def _database_exists(url: str) -> bool:
    if url.startswith("sqlite"):
        return _sqlite_path(url).is_file()
    return True


def restore(settings: Settings, src: Path, *, force: bool = False) -> Summary:
    """Restore a backup made by :func:`backup` into the configured database and store."""
    from server.db import migrate

    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not an itloop backup (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise BackupError(f"{src / MANIFEST} is damaged: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src} has backup format {manifest.get('format')!r}; this itloop reads {FORMAT}")
    kind = manifest["database"]
    url = settings.resolved_database_url
    if (kind == "sqlite") != settings.is_sqlite:
        target = "SQLite" if settings.is_sqlite else "PostgreSQL"
        raise BackupError(
            f"the backup is of a {kind} database but the target is {target}; restore into the same kind "
            "(set ITLOOP_DATABASE_URL)"
        )
    store = open_store(settings.resolved_store_url)
    reason = _has_data(url, store)
    if reason and not force:
        raise BackupError(f"the target is not empty ({reason}); pass --force to replace it")
    if reason:
        log.warning("restoring over a target that is not empty (%s)", reason)

    # The store first: a database restored (even partly) never names an object that is not there.
    objects = object_bytes = 0
    for key, path in _backup_files(src / STORE_DIR) if (src / STORE_DIR).is_dir() else []:
        data = path.read_bytes()
        local = store.local_path(key)
        if local is None or not local.is_file() or local.read_bytes() != data:
            store.put(key, data)
        objects, object_bytes = objects + 1, object_bytes + len(data)

    if kind == "sqlite":
        db_file = _sqlite_path(url)
        db_file.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(src / SQLITE_FILE)
        dst = sqlite3.connect(db_file, timeout=60)
        try:
            with dst:
                source.backup(dst)  # replaces every page of the target, WAL included
        finally:
            dst.close()
            source.close()
    else:
        conninfo, env = _libpq(url)
        cmd = ["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--exit-on-error"]
        _run([*cmd, "--dbname", conninfo, str(src / PG_FILE)], env, "pg_restore")

    counts = table_counts(url)
    expected: dict[str, int] = manifest["counts"]
    differ = {n: (c, counts.get(n)) for n, c in expected.items() if counts.get(n) != c}
    if differ:
        raise BackupError(f"restored row counts differ from the backup's (backup, restored): {differ}")
    migrate.upgrade(url)  # a backup of an older release gets this release's schema
    revision = _revision(table_counts(url), url)
    return Summary(kind, revision, sum(expected.values()), len(expected), objects, object_bytes)
