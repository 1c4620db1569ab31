"""How a session hands its new jobs to a runner: tickets collected now, enqueued after commit.

Queues (Redis lists or an in-process pool) only ever carry job ids. A worker must never
dequeue an id whose row it cannot see yet, so jobs to enqueue are collected on the
SQLAlchemy session (``session.info``) and the post-commit hook in :mod:`jobs.queue` hands
them to the runner bound here. Kept apart from the state machine so every module that
makes a job runnable (submit, retry, release of a dependent) shares one way to do it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from server.db.base import as_utc
from server.jobs.tables import Job

if TYPE_CHECKING:
    from itloop.settings import Settings
    from jobs.queue import InProcessRunner, RQRunner

PENDING_KEY = "itloop.jobs.pending"
SETTINGS_KEY = "itloop.settings"
RUNNER_KEY = "itloop.runner"


@dataclass(frozen=True)
class Ticket:
    """What a runner needs to enqueue a job: its id, queue name and hard timeout.

    ``created_at`` (epoch seconds of the row's creation) tells this deployment's job ``7``
    from another's: two deployments that share one Redis database share its queues, and a
    worker of the other one would otherwise take the id, find a job ``7`` of its own that is
    not runnable, and drop it without a word while this night waits forever.
    """

    job_id: int
    queue: str
    timeout_s: int
    created_at: float | None = None


def ticket(job: Job) -> Ticket:
    created = as_utc(job.created_at).timestamp() if job.created_at is not None else None
    return Ticket(job_id=job.id, queue=job.queue, timeout_s=job.timeout_s, created_at=created)


def bind(
    session: Session, settings: Settings | None = None, runner: InProcessRunner | RQRunner | None = None
) -> Session:
    """Tell the post-commit hook which settings (and runner) this session's new jobs go to."""
    if settings is not None:
        session.info[SETTINGS_KEY] = settings
    if runner is not None:
        session.info[RUNNER_KEY] = runner
    return session


def defer_enqueue(session: Session, job: Job) -> None:
    """Enqueue ``job`` once this session commits (never before: its row must be visible)."""
    session.info.setdefault(PENDING_KEY, []).append(ticket(job))


def current_settings(session: Session) -> Settings:
    settings = session.info.get(SETTINGS_KEY)
    if settings is None:
        import itloop.settings as settings_module  # late: tests replace get_settings

        settings = settings_module.get_settings()
    return settings


def resolve_queue(settings: Settings, queue: str) -> str:
    """Map the logical queue names of the registry onto the configured ones."""
    if queue == "itloop":
        return settings.queue_name
    if queue == "itloop-gpu":
        return settings.gpu_queue_name
    return queue
