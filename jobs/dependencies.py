"""The job DAG: a job waits until its dependencies succeed and fails when one of them fails.

A job's ``depends_on`` is a list of job ids. When a job settles, its waiting dependents are
released (all their dependencies succeeded) or failed transitively (one failed or was
cancelled). A running job may also fan out and make its own dependents wait on the jobs it
spawned (:func:`splice_before_dependents`). Kept apart from submission and execution: both
settle dependents, and the reaper repairs those a crash left behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.handoff import defer_enqueue
from server.db.base import utcnow
from server.jobs.tables import Job, JobState


def dependency_states(session: Session, deps: Sequence[int], *, lock: bool = False) -> dict[int, str]:
    """State of each dependency that exists; ``lock`` takes their row locks on PostgreSQL."""
    if not deps:
        return {}
    query = select(Job.id, Job.state).where(Job.id.in_(list(deps))).order_by(Job.id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return {i: s for i, s in session.execute(query)}


def set_initial_state(job: Job, dep_states: dict[int, str]) -> None:
    """A new job is failed (a dependency failed), queued (all succeeded) or waiting."""
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
                states = dependency_states(session, w.depends_on)
                if all(states.get(d) == JobState.succeeded for d in w.depends_on):
                    w.state = JobState.queued
                    session.flush()
                    defer_enqueue(session, w)
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
        states = dependency_states(session, w.depends_on or [])
        bad = next((d for d in w.depends_on if states.get(d) in (JobState.failed, JobState.cancelled)), None)
        if bad is not None:
            parent = session.get(Job, bad)
            assert parent is not None
            changed += settle_dependents(session, parent)
        elif all(states.get(d) == JobState.succeeded for d in w.depends_on):
            w.state = JobState.queued
            session.flush()
            defer_enqueue(session, w)
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
