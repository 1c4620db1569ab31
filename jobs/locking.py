"""The two concurrency primitives every job-state change relies on: a write lock and compare-and-set.

Every state change of a job is a compare-and-set on its row (an UPDATE guarded by the
state it expects), so two workers never both run a job; how many rows the UPDATE matched
is the outcome. SQLite needs one more thing, the write lock taken up front
(:func:`write_lock`). Kept in one small module so the job, lease, night and liveness
modules share them without importing one another.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Update, literal, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from server.jobs.tables import Job


def write_lock(session: Session) -> None:
    """On SQLite, take the write lock before this transaction reads anything.

    SQLite (WAL) refuses at once, with "database is locked", a transaction that read
    and then writes after another connection committed; busy_timeout cannot help. A
    no-op UPDATE as the first statement makes the transaction a writer from the start,
    so it waits its turn instead. PostgreSQL needs nothing: its row locks do the work.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Job).where(literal(False)).values(id=Job.id))


def matched_rows(session: Session, statement: Update) -> int:
    """Rows an UPDATE matched: the outcome of a compare-and-set."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount)
