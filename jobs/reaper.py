"""The reaper: puts work lost to killed workers or a flushed Redis back on its feet.

Workers call :func:`reap` when they start and every ``ITLOOP_REAP_EVERY_S``, and so does
``itloop serve`` on the embedded default (its jobs run in its own thread pool):

(a) a running job whose heartbeat is older than ``stale_after_s`` (its worker was
    killed, or its machine died) goes back to ``queued`` with the attempt counted,
    or to ``failed`` when it has used all its attempts;
(b) queued jobs that the queue backend does not hold (Redis was flushed or lost
    its data; the in-process pool died with its server) are enqueued again. A
    duplicate is harmless: running a job starts with a compare-and-set claim on
    its row, so only one worker ever runs it;
(c) waiting jobs whose dependencies already settled are released (or failed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from itloop.settings import Settings
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.queue import InProcessRunner, RQRunner
from server.db.engine import session_scope

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: list[int] = field(default_factory=list)  # stale running -> queued
    failed: list[int] = field(default_factory=list)  # stale running, out of attempts -> failed
    reenqueued: list[int] = field(default_factory=list)  # queued in the DB, missing from the backend
    released: list[int] = field(default_factory=list)  # waiting jobs settled

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.reenqueued or self.released)


def reap(
    session: Session,
    runner: InProcessRunner | RQRunner,
    stale_after_s: float | None = None,
    *,
    requeue_grace_s: float | None = None,
) -> ReapReport:
    """Recover stale and lost jobs; what it re-queues is enqueued when ``session`` commits."""
    config = get_worker_config()
    stale_after_s = config.stale_after_s if stale_after_s is None else stale_after_s
    requeue_grace_s = config.requeue_grace_s if requeue_grace_s is None else requeue_grace_s
    jobstate.bind(session, runner.settings, runner)
    jobstate.write_lock(session)
    report = ReapReport()
    report.requeued, report.failed = jobstate.reap_stale(session, stale_after_s)
    report.released = jobstate.settle_waiting(session)
    queued = jobstate.queued_tickets(session, older_than_s=requeue_grace_s)
    present = _present(runner, sorted({t.queue for t in queued})) if queued else None
    if present is not None:
        fresh = set(report.requeued) | set(report.released)
        missing = [t for t in queued if t.job_id not in present and t.job_id not in fresh]
        if missing:
            runner.enqueue(missing)  # these rows are already committed as queued
            report.reenqueued = [t.job_id for t in missing]
    session.flush()
    if report:
        log.warning("reaper: %s", report)
    return report


def _present(runner: InProcessRunner | RQRunner, queues: list[str]) -> set[int] | None:
    """What the backend holds; None (re-enqueue nothing) when it cannot be asked (Redis down).

    Not knowing must not stop the rest of the pass: stale jobs still go back to queued and
    settled dependents are still released, in the database; they reach Redis when it returns.
    """
    try:
        return runner.present_job_ids(queues)
    except Exception as exc:  # redis.ConnectionError and friends
        log.warning("reaper: queue backend unreachable (%s); re-enqueueing later", type(exc).__name__)
        return None


def reap_once(settings: Settings, runner: InProcessRunner | RQRunner) -> None:
    """One reaper pass in its own transaction; a failure is logged, never fatal to the worker."""
    try:
        with session_scope(settings.resolved_database_url) as session:
            reap(session, runner)
    except Exception:
        log.exception("reaper pass failed")
