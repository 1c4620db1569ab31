"""Run one job by id: claim the row, heartbeat while the function runs, record the outcome.

:func:`execute_job` is the function RQ calls (module-level, takes the id and its creation time);
the in-process runner and the DB-polling worker call :func:`run_job` directly.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import traceback
from typing import Any

from rq.timeouts import JobTimeoutException
from sqlalchemy import select

from itloop.settings import Settings
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.context import JobCancelled, JobContext, JobLost, JobTimeout
from jobs.registry import SUCCESS_HOOKS, get_spec, load_job_modules
from server.db.base import as_utc
from server.db.engine import session_scope
from server.jobs.tables import Job, JobState

log = logging.getLogger(__name__)


def execute_job(job_id: int, created_at: float | None = None) -> str | None:
    """RQ entry point: run job ``job_id`` with this process's settings; returns its final state.

    ``created_at`` is the row's creation time as the enqueuer saw it (None from versions that
    did not send it): a job of another deployment is refused, loudly, not silently dropped.
    """
    import itloop.settings as settings_module

    settings = settings_module.get_settings()
    if created_at is not None and not _is_ours(int(job_id), float(created_at), settings):
        return None
    return run_job(int(job_id), settings)


def _is_ours(job_id: int, created_at: float, settings: Settings) -> bool:
    """Whether job ``job_id`` of this worker's database is the one that was enqueued."""
    with session_scope(settings.resolved_database_url) as session:  # one column, not the row's log
        created = session.scalar(select(Job.created_at).where(Job.id == job_id))
    mine = None if created is None else as_utc(created).timestamp()
    if mine is not None and abs(mine - created_at) < 1e-3:
        return True
    fix = (
        "another itloop deployment shares this Redis database: give each its own "
        "(ITLOOP_REDIS_URL) or its own queue names (ITLOOP_QUEUE_NAME, ITLOOP_GPU_QUEUE_NAME)"
    )
    if mine is None:  # deleted since it was queued, or the other deployment's
        log.warning(
            "job %s on the queue is not in this database; not running it. Deleted, or %s", job_id, fix
        )
    else:
        log.error(
            "job %s on the queue is another deployment's (this database's job of that id was created "
            "at another time); not running it: %s",
            job_id,
            fix,
        )
    return False


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


class _Heartbeat(threading.Thread):
    """Writes heartbeat_at (and the log tail) every few seconds; learns of cancellation and lost leases."""

    def __init__(self, ctx: JobContext, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        url = self.ctx.settings.resolved_database_url
        while not self.stopped.wait(self.interval_s):
            try:
                with session_scope(url) as session:
                    ours, cancel = jobstate.touch(
                        session, self.ctx.job_id, self.ctx.attempt, log_tail=self.ctx.take_dirty_log()
                    )
                self.ctx.note_lease(ours, cancel)
            except Exception:  # a missed beat is not fatal; the next one may work
                log.warning("heartbeat of job %s failed", self.ctx.job_id, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:1000] if text else type(exc).__name__


def run_job(job_id: int, settings: Settings, *, name: str | None = None) -> str | None:
    """Run one job if it can be claimed; return the state recorded, or None when not ours to run."""
    url = settings.resolved_database_url
    load_job_modules()
    config = get_worker_config()
    with session_scope(url) as session:
        jobstate.bind(session, settings)
        job = jobstate.claim(session, job_id, name or worker_name())
        if job is None:
            log.debug("job %s not claimable (taken, finished or cancelled)", job_id)
            return None
        header = f"--- attempt {job.attempts} of {job.max_attempts} on {job.worker} ---\n"
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            params=job.params or {},
            settings=settings,
            attempt=job.attempts,
            timeout_s=job.timeout_s,
            config=config,
            night_id=job.night_id,
            depends_on=job.depends_on or [],
            log_tail=((job.log_tail or "") + header)[-config.log_tail_chars :],
        )
        max_attempts = job.max_attempts
        if job.night_id is not None:
            jobstate.refresh_night(session, job.night_id)
    log.info("job %s (%s) attempt %s started", job_id, ctx.kind, ctx.attempt)

    heartbeat = _Heartbeat(ctx, config.heartbeat_s)
    heartbeat.start()
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        spec = get_spec(ctx.kind)
        if spec is None:
            raise LookupError(
                f"no job function registered for kind {ctx.kind!r} (is worker.stages installed?)"
            )
        result = spec.fn(ctx) or {}
        if not isinstance(result, dict):
            raise TypeError(f"job {ctx.kind!r} returned {type(result).__name__}, expected a dict")
        result = json.loads(json.dumps(result))  # refuse what the JSON column cannot hold, now
        state = JobState.succeeded
    except JobLost:
        log.warning("job %s lost its lease; not recording this attempt", job_id)
        return None
    except JobCancelled:
        state, error = JobState.cancelled, "cancelled on request"
    except (JobTimeout, JobTimeoutException):
        state, error = JobState.failed, f"timed out after {ctx.timeout_s} s"
        ctx.log(error)
    except Exception as exc:  # any failure of the job is recorded, not raised
        error = _one_line(exc)
        ctx.log(traceback.format_exc())
        # An exception may say that running again cannot help (``retryable = False``, e.g. a
        # missing checkpoint file): then the job fails now instead of repeating the same error.
        retry = ctx.attempt < max_attempts and getattr(exc, "retryable", True)
        state = JobState.queued if retry else JobState.failed
    finally:
        heartbeat.stop()

    if state == JobState.succeeded:
        try:
            return _record(settings, ctx, state=state, result=result)
        except Exception as exc:  # a success hook failed: record the failure instead
            error = f"after success: {_one_line(exc)}"
            ctx.log(traceback.format_exc())
            state = JobState.queued if ctx.attempt < max_attempts else JobState.failed
    return _record(settings, ctx, state=state, error=error)


def _record(
    settings: Settings,
    ctx: JobContext,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> str | None:
    with session_scope(settings.resolved_database_url) as session:
        jobstate.bind(session, settings)
        job = jobstate.finish(
            session, ctx.job_id, ctx.attempt, state=state, result=result, error=error, log_tail=ctx.log_tail()
        )
        if job is None:
            log.warning("job %s: lease lost before its outcome (%s) could be recorded", ctx.job_id, state)
            return None
        if state == JobState.succeeded:
            for hook in SUCCESS_HOOKS.get(job.kind, []):
                hook(session, job, result or {}, settings)
        if state != JobState.queued:
            jobstate.settle_dependents(session, job)
        if job.night_id is not None:
            jobstate.refresh_night(session, job.night_id)
    level = logging.INFO if state == JobState.succeeded else logging.WARNING
    log.log(
        level,
        "job %s (%s) attempt %s: %s%s",
        ctx.job_id,
        ctx.kind,
        ctx.attempt,
        state,
        f" ({error})" if error else "",
    )
    return state
