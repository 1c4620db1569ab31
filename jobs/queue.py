"""Two runners behind one interface: in-process (embedded default) and RQ (Redis).

A runner only moves job ids around; what runs, and whether it may run, is
decided by the job row (see :mod:`jobs.state`). Pick one with
:func:`get_runner`: RQ when ``ITLOOP_REDIS_URL`` is set, else in-process.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import event
from sqlalchemy.orm import Session

from itloop.settings import Settings
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.execute import execute_job, run_job
from jobs.handoff import Ticket
from server.db.engine import session_scope

log = logging.getLogger(__name__)

RQ_ID_PREFIX = "itloop-"


class InProcessRunner:
    """Runs jobs in this process: in a background thread pool, or synchronously via :meth:`run_until_idle`.

    With ``background=False`` enqueueing does nothing: the database already says
    what is queued, and :meth:`run_until_idle` (CLI, demo, tests) or the
    DB-polling worker picks it up.
    """

    def __init__(self, settings: Settings, *, background: bool = False, threads: int = 1) -> None:
        self.settings = settings
        self.background = background
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._held: Counter[int] = Counter()  # ids submitted to the pool and not yet done

    def enqueue(self, tickets: Sequence[Ticket]) -> None:
        if not self.background or not tickets:
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="itloop-job")
            for t in tickets:
                self._held[t.job_id] += 1
                self._pool.submit(self._run_logged, t.job_id)

    def _run_logged(self, job_id: int) -> None:
        try:
            run_job(job_id, self.settings)
        except Exception:  # a thread must not die silently
            log.exception("in-process job %s crashed the runner", job_id)
        finally:
            with self._pool_lock:
                self._held[job_id] -= 1
                if self._held[job_id] <= 0:
                    del self._held[job_id]

    def present_job_ids(self, queues: Sequence[str] = ()) -> set[int] | None:
        """Ids waiting in (or running on) the background pool; None without one.

        A pool dies with its process: after a restart it holds nothing, so the reaper
        re-enqueues every queued job. Without a background pool (CLI, DB-polling worker) the
        database is the queue, and there is nothing to re-enqueue.
        """
        if not self.background:
            return None
        with self._pool_lock:
            return set(self._held)

    def run_next(self, queues: Sequence[str] | None = None) -> int | None:
        """Claim and run the oldest queued job; its id, or None when nothing could be claimed."""
        with session_scope(self.settings.resolved_database_url) as session:
            candidates = jobstate.queued_ids(session, queues)
        for job_id in candidates:
            if run_job(job_id, self.settings) is not None:
                return job_id
        return None

    def run_until_idle(
        self,
        queues: Sequence[str] | None = None,
        *,
        max_jobs: int | None = None,
        on_job: Callable[[int], None] | None = None,
    ) -> int:
        """Run queued jobs (including those they release or spawn) until none is left; returns the count."""
        done = 0
        while max_jobs is None or done < max_jobs:
            job_id = self.run_next(queues)
            if job_id is None:
                break
            done += 1
            if on_job is not None:
                on_job(job_id)
        return done

    def shutdown(self, wait: bool = True) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait)
                self._pool = None


class RQRunner:
    """Enqueues job ids on named RQ queues; ``itloop worker`` processes run them."""

    def __init__(self, settings: Settings) -> None:
        from redis import Redis

        if not settings.redis_url:
            raise ValueError("RQRunner needs ITLOOP_REDIS_URL")
        self.settings = settings
        # A bounded connect: with Redis unreachable (not just refusing), an enqueue after a commit
        # or a reaper pass fails in seconds instead of blocking for the OS's TCP timeout. No read
        # timeout: RQ's dequeue blocks on this connection on purpose.
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_keepalive=True)

    def queue(self, name: str):  # rq.Queue, imported lazily
        from rq import Queue

        return Queue(name, connection=self.redis)

    def queue_names(self) -> list[str]:
        return list(dict.fromkeys([self.settings.queue_name, self.settings.gpu_queue_name]))

    def enqueue(self, tickets: Sequence[Ticket]) -> None:
        for t in tickets:
            self.queue(t.queue).enqueue(
                execute_job,
                t.job_id,
                t.created_at,
                job_id=f"{RQ_ID_PREFIX}{t.job_id}-{uuid.uuid4().hex[:8]}",
                job_timeout=t.timeout_s,
                result_ttl=600,
                failure_ttl=7 * 24 * 3600,
                description=f"itloop job {t.job_id}",
            )

    def present_job_ids(self, queues: Sequence[str] = ()) -> set[int] | None:
        """Ids waiting in the RQ queues. A job a worker took but never claimed is not counted: lost."""
        ids: set[int] = set()
        for name in dict.fromkeys([*self.queue_names(), *queues]):
            for rq_id in self.queue(name).get_job_ids():
                if rq_id.startswith(RQ_ID_PREFIX):
                    try:
                        ids.add(int(rq_id[len(RQ_ID_PREFIX) :].split("-", 1)[0]))
                    except ValueError:
                        continue
        return ids


_RUNNERS: dict[tuple[str, str | None], InProcessRunner | RQRunner] = {}
_runners_lock = threading.Lock()


def get_runner(settings: Settings, *, background: bool | None = None) -> InProcessRunner | RQRunner:
    """The process's runner for these settings: RQ when a Redis URL is set, else in-process.

    ``background`` (in-process only) overrides ``ITLOOP_INPROCESS_BACKGROUND``:
    the CLI and tests pass False and drive jobs with ``run_until_idle``.
    """
    key = (settings.resolved_database_url, settings.redis_url)
    with _runners_lock:
        runner = _RUNNERS.get(key)
        if runner is None:
            if settings.redis_url:
                runner = RQRunner(settings)
            else:
                config = get_worker_config()
                runner = InProcessRunner(
                    settings,
                    background=config.inprocess_background if background is None else background,
                    threads=config.inprocess_threads,
                )
            _RUNNERS[key] = runner
        elif background is not None and isinstance(runner, InProcessRunner):
            runner.background = background
        return runner


def reset_runners() -> None:
    """Forget cached runners (tests switch databases and Redis between cases)."""
    with _runners_lock:
        for runner in _RUNNERS.values():
            if isinstance(runner, InProcessRunner):
                runner.shutdown(wait=True)
        _RUNNERS.clear()


# --- after commit: hand the transaction's new queued jobs to the runner --------------------


@event.listens_for(Session, "after_commit")
def _enqueue_after_commit(session: Session) -> None:
    """Enqueue the tickets :mod:`jobs.state` collected on this session, now that its rows are visible.

    Registered once, when :mod:`jobs` is imported (its ``__init__`` imports this module), so
    every session that submits jobs through :mod:`jobs.state` has it.
    """
    tickets: list[Ticket] = session.info.pop(jobstate.PENDING_KEY, None) or []
    if not tickets:
        return
    try:
        runner = session.info.get(jobstate.RUNNER_KEY) or get_runner(jobstate.current_settings(session))
        runner.enqueue(tickets)
    except Exception:  # the rows are committed; the reaper re-enqueues them
        log.exception(
            "could not enqueue jobs %s; the reaper will re-enqueue them", [t.job_id for t in tickets]
        )


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(jobstate.PENDING_KEY, None)
