"""Engine and session factory, created on first use (never at import) and cached per URL."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from itloop.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    """BEGIN, or BEGIN IMMEDIATE for units of work that will write (``itloop_write`` option).

    A deferred transaction that reads and then writes fails at once with "database is locked"
    when another connection committed in between; taking the write lock up front avoids that,
    while read-only work (health, dashboards) never waits behind a writer.
    """
    immediate = conn.get_execution_options().get("itloop_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    """In a forked child, drop the pooled connections inherited from the parent without closing them.

    A forked process (RQ's work horse, above all) shares the parent's sockets: using one from
    both sides corrupts the protocol (on PostgreSQL, ``prepared statement "_pg3_1" already
    exists``), and closing it would close the parent's too. SQLAlchemy's recipe for this is
    ``dispose(close=False)`` in the child, which makes the child open its own connections.
    Registered once with :func:`os.register_at_fork`, so every fork is covered, whoever forks.
    """
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_connections)


def make_engine(url: str) -> Engine:
    """Build an engine with the per-backend settings itloop relies on (FKs on SQLite, pre-ping).

    Every engine is tracked so that a forked child never reuses the parent's connections.
    """
    engine = _build_engine(url)
    _engines.add(engine)
    return engine


def _build_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling skips BEGIN and breaks SAVEPOINTs; let
        # SQLAlchemy emit BEGIN itself so transactions and rollbacks are real. Deferred, not
        # IMMEDIATE: readers (health checks, dashboards) must not queue behind a writer. Code that
        # reads then writes under contention takes the write lock first (jobs.state.write_lock).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    return make_engine(url or get_settings().resolved_database_url)


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return _sessionmaker_for(get_engine(url))


@lru_cache(maxsize=8)
def _sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    # keyed by the engine, so a rebuilt engine (tests clear get_engine's cache) gets its own
    return sessionmaker(bind=engine, expire_on_commit=False)


def new_session(url: str | None = None, *, write: bool = False) -> Session:
    """A session that connects on first use; ``write`` makes its SQLite transaction IMMEDIATE.

    Creating it does no I/O, so the API can make one per request on the event loop and a
    request that never touches the database (a cached token, a known image) costs nothing.
    """
    engine = get_engine(url)
    if write and engine.dialect.name == "sqlite":
        return get_sessionmaker(url)(bind=engine.execution_options(itloop_write=True))
    return get_sessionmaker(url)()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
