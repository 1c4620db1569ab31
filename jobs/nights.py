"""A night's state, derived from its jobs: it fails as soon as one of them fails for good.

A night is a group of jobs (``job.night_id``). It has no state machine of its own:
:func:`refresh_night` derives it from its jobs each time one of them settles, and stops the
rest of a failed night (queued and waiting jobs are cancelled, running ones asked to stop).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import NotFound
from server.db.base import utcnow
from server.db.paging import paginate
from server.jobs.tables import Job, JobState, Night

ACTIVE_STATES = (JobState.queued, JobState.running, JobState.waiting)
TERMINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)


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
