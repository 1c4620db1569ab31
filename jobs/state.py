"""Job and night bookkeeping: the database is the single source of truth for background work.

This module is the job system's one entry point for callers (``from jobs import state``):
it creates, reads and cancels jobs, and re-exports the rest of the bookkeeping, which lives
one idea per module:

- :mod:`jobs.handoff`: tickets collected on the session, enqueued only after commit, so a
  worker never dequeues an id it cannot see;
- :mod:`jobs.locking`: the SQLite write lock and the compare-and-set every change relies on;
- :mod:`jobs.lease`: claim, heartbeat and outcome of an attempt, fenced by its number;
- :mod:`jobs.dependencies`: the DAG (waiting, release, transitive failure, fan-out);
- :mod:`jobs.nights`: a night's state derived from its jobs;
- :mod:`jobs.recovery`: jobs lost to a dead worker or a flushed queue;
- :mod:`jobs.beats`: worker liveness rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from jobs.beats import alive_workers, beat_worker, forget_worker
from jobs.dependencies import (
    dependency_states,
    set_initial_state,
    settle_dependents,
    settle_waiting,
    splice_before_dependents,
)
from jobs.handoff import (
    PENDING_KEY,
    RUNNER_KEY,
    SETTINGS_KEY,
    Ticket,
    bind,
    current_settings,
    defer_enqueue,
    resolve_queue,
    ticket,
)
from jobs.lease import claim, finish, queued_ids, touch
from jobs.locking import matched_rows, write_lock
from jobs.nights import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    get_night,
    list_nights,
    night_jobs,
    night_progress,
    refresh_night,
)
from jobs.recovery import queued_tickets, reap_stale
from jobs.registry import JOBS, get_spec
from server.db import all_tables  # noqa: F401  (every mapper defined before a query configures them)
from server.db.base import utcnow
from server.db.paging import paginate
from server.jobs.tables import Job, JobState

if TYPE_CHECKING:
    from itloop.settings import Settings

__all__ = [
    "ACTIVE_STATES",
    "PENDING_KEY",
    "RUNNER_KEY",
    "SETTINGS_KEY",
    "TERMINAL_STATES",
    "Ticket",
    "alive_workers",
    "beat_worker",
    "bind",
    "cancel",
    "claim",
    "current_settings",
    "finish",
    "forget_worker",
    "get",
    "get_night",
    "list_jobs",
    "list_nights",
    "night_jobs",
    "night_progress",
    "queued_ids",
    "queued_tickets",
    "reap_stale",
    "refresh_night",
    "resolve_queue",
    "settle_dependents",
    "settle_waiting",
    "splice_before_dependents",
    "submit",
    "ticket",
    "touch",
    "write_lock",
]


def submit(
    session: Session,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    depends_on: Iterable[int] = (),
    night_id: int | None = None,
    queue: str | None = None,
    timeout_s: int | None = None,
    max_attempts: int | None = None,
    settings: Settings | None = None,
) -> Job:
    """Create a job: queued when its dependencies all succeeded, else waiting (or failed if one failed)."""
    write_lock(session)
    spec = get_spec(kind)
    if spec is None:
        raise InvalidInput(
            f"unknown job kind {kind!r}; registered kinds: {', '.join(sorted(JOBS)) or 'none'}"
        )
    settings = settings or current_settings(session)
    if settings is not None:
        session.info.setdefault(SETTINGS_KEY, settings)
    deps = list(dict.fromkeys(int(d) for d in depends_on))
    # Lock the dependency rows (PostgreSQL): a dependency finishing right now either commits
    # first (we read its final state) or waits for us (its release step then sees this job).
    dep_states = dependency_states(session, deps, lock=True)
    missing = [d for d in deps if d not in dep_states]
    if missing:
        raise InvalidInput(f"dependencies not found: {missing}")
    job = Job(
        kind=kind,
        params=dict(params or {}),
        queue=resolve_queue(settings, queue or spec.queue),
        night_id=night_id,
        depends_on=deps,
        timeout_s=int(timeout_s or spec.timeout_s or settings.job_timeout_s),
        max_attempts=int(max_attempts or spec.max_attempts or settings.job_max_attempts),
    )
    set_initial_state(job, dep_states)
    session.add(job)
    session.flush()
    if job.state == JobState.waiting:
        # SQLite has no row locks, but our INSERT now holds its write lock: read again, so a
        # dependency that finished between our read and our insert is not missed.
        set_initial_state(job, dependency_states(session, deps))
    if job.state == JobState.queued:
        defer_enqueue(session, job)
    return job


def get(session: Session, job_id: int) -> Job:
    """One job by id."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    kind: str | None = None,
    state: str | None = None,
    night_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total that match the filters."""
    query = select(Job)
    if kind:
        query = query.where(Job.kind == kind)
    if state:
        query = query.where(Job.state == state)
    if night_id is not None:
        query = query.where(Job.night_id == night_id)
    rows, total = paginate(session, query, order_by=[Job.id.desc()], limit=limit, offset=offset)
    return [r[0] for r in rows], total


def cancel(session: Session, job_id: int) -> Job:
    """Cancel a job: at once if it has not started, else by flag that the running job polls."""
    write_lock(session)
    job = get(session, job_id)
    now = utcnow()
    done = matched_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.queued, JobState.waiting)))
        .values(state=JobState.cancelled, cancel_requested=True, finished_at=now, error="cancelled"),
    )
    if not done:
        flagged = matched_rows(
            session,
            update(Job).where(Job.id == job_id, Job.state == JobState.running).values(cancel_requested=True),
        )
        if not flagged:
            session.refresh(job)
            raise Conflict(f"job {job_id} already {job.state}")
    session.refresh(job)
    if job.state == JobState.cancelled:
        settle_dependents(session, job)
        if job.night_id is not None:
            refresh_night(session, job.night_id)
    return job
