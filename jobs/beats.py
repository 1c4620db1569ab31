"""Worker liveness rows: each worker process upserts a beat, ``/health`` counts the recent ones.

Liveness lives in the database (``worker_beats``), not in Redis, so ``/health`` can still
say which workers are alive while Redis is down. The threads that beat are in
:mod:`jobs.liveness`; this module is only the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from jobs.locking import write_lock
from server.db.base import utcnow
from server.jobs.tables import WorkerBeat


def beat_worker(session: Session, name: str, kind: str, queues: Sequence[str]) -> None:
    """Record that worker ``name`` is alive now (one row per worker process, upserted)."""
    write_lock(session)
    now = utcnow()
    row = session.get(WorkerBeat, name[:200])
    if row is None:
        session.add(WorkerBeat(name=name[:200], kind=kind, queues=",".join(queues)[:400], seen_at=now))
    else:
        row.seen_at = now
    # Rows of workers gone for a day only clutter the table: the reaper of jobs does not need them.
    session.execute(delete(WorkerBeat).where(WorkerBeat.seen_at < now - timedelta(days=1)))


def forget_worker(session: Session, name: str) -> None:
    """A worker that stops cleanly says so: it is no longer counted as alive."""
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == name[:200]))


def alive_workers(session: Session, within_s: float) -> list[WorkerBeat]:
    """Workers whose last beat is at most ``within_s`` old."""
    cutoff = utcnow() - timedelta(seconds=within_s)
    return list(session.scalars(select(WorkerBeat).where(WorkerBeat.seen_at >= cutoff)))
