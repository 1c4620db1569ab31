"""Job and night bookkeeping: the database is the single source of truth for background work.

Queues (Redis lists or an in-process pool) only ever carry job ids. Every state
change here is a compare-and-set on the job row, so two workers never both run a
job, and a worker that lost its lease (the reaper gave the job to another) can no
longer record a result: the attempt number it claimed with is its fencing token.

Jobs to enqueue are collected on the SQLAlchemy session and handed to the runner
only after the transaction commits, so a worker never dequeues an id it cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Update, delete, literal, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from jobs.registry import JOBS, get_spec
from server.db import all_tables  # noqa: F401  (every mapper defined before a query configures them)
from server.db.base import utcnow
from server.db.paging import paginate
from server.jobs.tables import Job, JobState, Night, WorkerBeat

if TYPE_CHECKING:
    from itloop.settings import Settings
    from jobs.queue import InProcessRunner, RQRunner

log = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.queued, JobState.running, JobState.waiting)
TERMINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)
PENDING_KEY = "itloop.jobs.pending"
SETTINGS_KEY = "itloop.settings"
RUNNER_KEY = "itloop.runner"


@dataclass(frozen=True)
class Ticket:
    """What a runner needs to enqueue a job: its id, queue name and hard timeout."""

    job_id: int
    queue: str
    timeout_s: int


def ticket(job: Job) -> Ticket:
    return Ticket(job_id=job.id, queue=job.queue, timeout_s=job.timeout_s)


def bind(
    session: Session, settings: Settings | None = None, runner: InProcessRunner | RQRunner | None = None
) -> Session:
    """Tell the post-commit hook which settings (and runner) this session's new jobs go to."""
    if settings is not None:
        session.info[SETTINGS_KEY] = settings
    if runner is not None:
        session.info[RUNNER_KEY] = runner
    return session


def _defer_enqueue(session: Session, job: Job) -> None:
    session.info.setdefault(PENDING_KEY, []).append(ticket(job))


def current_settings(session: Session) -> Settings:
    settings = session.info.get(SETTINGS_KEY)
    if settings is None:
        import itloop.settings as settings_module  # late: tests replace get_settings

        settings = settings_module.get_settings()
    return settings


def write_lock(session: Session) -> None:
    """On SQLite, take the write lock before this transaction reads anything.

    SQLite (WAL) refuses at once, with "database is locked", a transaction that read
    and then writes after another connection committed; busy_timeout cannot help. A
    no-op UPDATE as the first statement makes the transaction a writer from the start,
    so it waits its turn instead. PostgreSQL needs nothing: its row locks do the work.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Job).where(literal(False)).values(id=Job.id))


def resolve_queue(settings: Settings, queue: str) -> str:
    """Map the logical queue names of the registry onto the configured ones."""
    if queue == "itloop":
        return settings.queue_name
    if queue == "itloop-gpu":
        return settings.gpu_queue_name
    return queue


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
    dep_states = _dependency_states(session, deps, lock=True)
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
    _set_initial_state(job, dep_states)
    session.add(job)
    session.flush()
    if job.state == JobState.waiting:
        # SQLite has no row locks, but our INSERT now holds its write lock: read again, so a
        # dependency that finished between our read and our insert is not missed.
        _set_initial_state(job, _dependency_states(session, deps))
    if job.state == JobState.queued:
        _defer_enqueue(session, job)
    return job


def _dependency_states(session: Session, deps: Sequence[int], *, lock: bool = False) -> dict[int, str]:
    if not deps:
        return {}
    query = select(Job.id, Job.state).where(Job.id.in_(list(deps))).order_by(Job.id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return {i: s for i, s in session.execute(query)}


def _set_initial_state(job: Job, dep_states: dict[int, str]) -> None:
    deps = job.depends_on
    bad = next((d for d in deps if dep_states[d] in (JobState.failed, JobState.cancelled)), None)
    if bad is not None:
        job.state = JobState.failed
        job.error = f"dependency {bad} {dep_states[bad]}"
        job.finished_at = utcnow()
    elif all(dep_states[d] == JobState.succeeded for d in deps):
        job.state = JobState.queued
    else:
        job.state = JobState.waiting


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
    done = _rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.queued, JobState.waiting)))
        .values(state=JobState.cancelled, cancel_requested=True, finished_at=now, error="cancelled"),
    )
    if not done:
        flagged = _rows(
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


# --- execution: claim, heartbeat, finish -------------------------------------------------


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
    claimed = _rows(
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


def _rows(session: Session, statement: Update) -> int:
    """Rows an UPDATE matched: the outcome of a compare-and-set."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount)


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
    if _rows(session, _fenced(job_id, token).values(**values)) != 1:
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
    if _rows(session, _fenced(job_id, token).values(**values)) != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if state == JobState.queued:
        _defer_enqueue(session, job)
    return job


# --- dependencies ------------------------------------------------------------------------


def settle_dependents(session: Session, job: Job) -> list[int]:
    """Release waiting dependents of a succeeded job, or fail them (transitively) if it failed."""
    waiting = list(session.scalars(select(Job).where(Job.state == JobState.waiting)))
    changed: list[int] = []
    stack = [job]
    now = utcnow()
    while stack:
        parent = stack.pop()
        for w in waiting:
            if w.state != JobState.waiting or parent.id not in (w.depends_on or []):
                continue
            if parent.state == JobState.succeeded:
                states = _dependency_states(session, w.depends_on)
                if all(states.get(d) == JobState.succeeded for d in w.depends_on):
                    w.state = JobState.queued
                    session.flush()
                    _defer_enqueue(session, w)
                    changed.append(w.id)
            elif parent.state in (JobState.failed, JobState.cancelled):
                w.state = JobState.failed
                w.error = f"dependency {parent.id} {parent.state}"
                w.finished_at = now
                changed.append(w.id)
                stack.append(w)
    session.flush()
    return changed


def settle_waiting(session: Session) -> list[int]:
    """Repair waiting jobs whose dependencies already settled (a crash between two commits)."""
    changed: list[int] = []
    for w in list(session.scalars(select(Job).where(Job.state == JobState.waiting))):
        if w.state != JobState.waiting:
            continue
        states = _dependency_states(session, w.depends_on or [])
        bad = next((d for d in w.depends_on if states.get(d) in (JobState.failed, JobState.cancelled)), None)
        if bad is not None:
            parent = session.get(Job, bad)
            assert parent is not None
            changed += settle_dependents(session, parent)
        elif all(states.get(d) == JobState.succeeded for d in w.depends_on):
            w.state = JobState.queued
            session.flush()
            _defer_enqueue(session, w)
            changed.append(w.id)
    return changed


def splice_before_dependents(session: Session, parent_id: int, child_ids: Sequence[int]) -> list[int]:
    """Make every job waiting on ``parent_id`` also wait on ``child_ids`` (dynamic fan-out + join)."""
    touched = []
    for w in session.scalars(select(Job).where(Job.state == JobState.waiting)):
        if parent_id in (w.depends_on or []):
            w.depends_on = list(dict.fromkeys([*w.depends_on, *child_ids]))
            touched.append(w.id)
    session.flush()
    return touched


# --- recovery ----------------------------------------------------------------------------


def reap_stale(session: Session, stale_after_s: float) -> tuple[list[int], list[int]]:
    """Running jobs without a recent heartbeat go back to queued (or fail when out of attempts)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    stale = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts).where(
            Job.state == JobState.running,
            or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None) & (Job.started_at < cutoff)),
        )
    ).all()
    requeued, failed = [], []
    for job_id, attempts, max_attempts in stale:
        lost = f"worker lost: no heartbeat for {stale_after_s:g} s (attempt {attempts} of {max_attempts})"
        final = attempts >= max_attempts
        job = finish(
            session, job_id, attempts, state=JobState.failed if final else JobState.queued, error=lost
        )
        if job is None:
            continue
        if final:
            failed.append(job_id)
            settle_dependents(session, job)
            if job.night_id is not None:
                refresh_night(session, job.night_id)
        else:
            requeued.append(job_id)
        log.warning("job %s (%s): %s; %s", job_id, job.kind, lost, "failed" if final else "re-queued")
    return requeued, failed


def queued_tickets(session: Session, *, older_than_s: float) -> list[Ticket]:
    """Queued jobs created more than ``older_than_s`` ago (candidates for re-enqueueing)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    rows = session.scalars(
        select(Job).where(Job.state == JobState.queued, Job.created_at <= cutoff).order_by(Job.id)
    )
    return [ticket(j) for j in rows]


# --- nights ------------------------------------------------------------------------------


def get_night(session: Session, night_id: int) -> Night:
    """One night by id."""
    night = session.get(Night, night_id)
    if night is None:
        raise NotFound(f"no night {night_id}")
    return night


def list_nights(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[Night], int]:
    """A page of nights, newest first, and their total."""
    rows, total = paginate(session, select(Night), order_by=[Night.id.desc()], limit=limit, offset=offset)
    return [r[0] for r in rows], total


def night_jobs(session: Session, night_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.night_id == night_id).order_by(Job.id)))


def refresh_night(session: Session, night_id: int) -> Night:
    """Derive a night's state from its jobs; a job failed for good fails the night and stops the rest."""
    night = get_night(session, night_id)
    jobs = night_jobs(session, night_id)
    now = utcnow()
    broken = [j for j in jobs if j.state in (JobState.failed, JobState.cancelled)]
    if broken:
        root = next((j for j in broken if not (j.error or "").startswith("dependency ")), broken[0])
        if night.state != JobState.failed:
            night.state = JobState.failed
            night.error = f"{root.kind} (job {root.id}) {root.state}: {root.error or 'no error recorded'}"
        for j in jobs:
            if j.state in (JobState.queued, JobState.waiting):
                j.state, j.error, j.finished_at = JobState.cancelled, "night failed", now
                j.cancel_requested = True
            elif j.state == JobState.running:
                j.cancel_requested = True
        if not any(j.state == JobState.running for j in jobs):
            night.finished_at = night.finished_at or now
    elif jobs and all(j.state == JobState.succeeded for j in jobs):
        night.state = JobState.succeeded
        night.finished_at = night.finished_at or now
    elif any(j.state in (JobState.running, JobState.succeeded) for j in jobs):
        night.state = JobState.running
    else:
        night.state = JobState.queued
    session.flush()
    return night


def night_progress(jobs: Sequence[Job]) -> float:
    """Mean job progress, a finished job counting as 1: a rough but monotone-enough gauge."""
    if not jobs:
        return 0.0
    return sum(1.0 if j.state in TERMINAL_STATES else float(j.progress or 0.0) for j in jobs) / len(jobs)


# --- worker liveness ---------------------------------------------------------------------


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
