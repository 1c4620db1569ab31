"""Running a job under a lease: claim it, beat while it runs, record its outcome.

A worker claims a queued job with a compare-and-set that counts the attempt; that attempt
number is its fencing token. Every later write of the attempt (heartbeat, progress, result)
is guarded by it, so a worker that lost its lease (the reaper gave the job to another) can
no longer record anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session

from jobs.handoff import defer_enqueue
from jobs.locking import matched_rows
from server.db.base import utcnow
from server.jobs.tables import Job, JobState


def queued_ids(session: Session, queues: Sequence[str] | None = None, limit: int = 20) -> list[int]:
    """Oldest queued job ids (in the given queues); skips rows another worker has locked on PostgreSQL."""
    query = select(Job.id).where(Job.state == JobState.queued).order_by(Job.id).limit(limit)
    if queues:
        query = query.where(Job.queue.in_(list(queues)))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def claim(session: Session, job_id: int, worker: str) -> Job | None:
    """Atomically move a queued job to running; None when someone else has it (or it is gone)."""
    now = utcnow()
    claimed = matched_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued, Job.cancel_requested.is_(False))
        .values(
            state=JobState.running,
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            worker=worker[:200],
        ),
    )
    if claimed != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def _fenced(job_id: int, token: int) -> Update:
    return update(Job).where(Job.id == job_id, Job.state == JobState.running, Job.attempts == token)


def touch(
    session: Session,
    job_id: int,
    token: int,
    *,
    progress: float | None = None,
    message: str | None = None,
    log_tail: str | None = None,
) -> tuple[bool, bool]:
    """Heartbeat (optionally progress and log) of a running attempt: (still ours, cancel requested)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = float(progress)
    if message is not None:
        values["progress_message"] = message[:2000]
    if log_tail is not None:
        values["log_tail"] = log_tail
    if matched_rows(session, _fenced(job_id, token).values(**values)) != 1:
        return False, False
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return True, cancel


def finish(
    session: Session,
    job_id: int,
    token: int,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    log_tail: str | None = None,
) -> Job | None:
    """Record an attempt's outcome; ``state=queued`` means retry. None when the lease was lost."""
    values: dict[str, Any] = {"state": state, "error": error}
    if log_tail is not None:
        values["log_tail"] = log_tail
    if state == JobState.queued:
        values.update(worker=None, heartbeat_at=None)
    else:
        values["finished_at"] = utcnow()
    if state == JobState.succeeded:
        values.update(result=result or {}, progress=1.0, error=None)
    if matched_rows(session, _fenced(job_id, token).values(**values)) != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if state == JobState.queued:
        defer_enqueue(session, job)
    return job
