"""The database side of recovery: which running jobs lost their worker, which queued ones to re-send.

:mod:`jobs.reaper` decides when to look and talks to the queue backend; this module only
reads and changes job rows, through the same fenced writes a worker uses, so a worker that
comes back from the dead after its job was reaped cannot overwrite the outcome.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from jobs.dependencies import settle_dependents
from jobs.handoff import Ticket, ticket
from jobs.lease import finish
from jobs.nights import refresh_night
from server.db.base import utcnow
from server.jobs.tables import Job, JobState

log = logging.getLogger(__name__)


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
