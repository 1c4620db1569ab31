"""Throwaway PostgreSQL databases for the tests and the benchmarks (never the lab's own).

Both need a fresh database per run; this is the one place that makes and drops them, so the
benchmarks do not depend on the test suite. The server connects as ``ITLOOP_TEST_PG_ADMIN_URL``
(default: the local ``postgres`` superuser, trust authentication) to create and drop them.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.db.engine import get_engine

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """Where to create throwaway databases: ``ITLOOP_TEST_PG_ADMIN_URL`` or the local default."""
    return os.environ.get("ITLOOP_TEST_PG_ADMIN_URL", DEFAULT_ADMIN_URL)


def create_pg_database(name: str) -> str:
    """A new, empty database called ``name`` (dropped first if it exists); its URL."""
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url()).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(name: str) -> None:
    """Drop ``name`` (connections to it are closed first, ours and anyone's)."""
    get_engine.cache_clear()
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
