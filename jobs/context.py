"""What a job function gets: its id and params, settings, DB sessions, the store, progress and logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import state as jobstate
from server.db.engine import session_scope
from server.jobs.tables import Job

if TYPE_CHECKING:
    from itloop.settings import Settings
    from itloop.storage import ObjectStore
    from jobs.config import WorkerConfig

log = logging.getLogger(__name__)


class JobCancelled(Exception):  # reads as an event, like rq's exceptions
    """Raised inside a job when someone asked to cancel it; the job ends ``cancelled``."""


class JobTimeout(Exception):
    """Raised inside a job that ran past its ``timeout_s``; the job ends ``failed``, not retried."""


class JobLost(JobCancelled):
    """Raised when the reaper gave this job to another worker; nothing more is recorded by this one."""


class JobContext:
    """The handle a job function gets. Cheap to build; nothing touches CUDA or the store until asked.

    Parameters
    ----------
    job_id, kind, params
        The job row's identity and inputs (params are a copy: mutate freely).
    settings
        The process settings (database, store, device).
    attempt
        Which attempt this is (1-based); also the fencing token for writes to the row.
    timeout_s
        Wall-clock budget; :meth:`check_cancelled` raises :class:`JobTimeout` past it.
    """

    def __init__(
        self,
        *,
        job_id: int,
        kind: str,
        params: dict[str, Any],
        settings: Settings,
        attempt: int,
        timeout_s: int,
        config: WorkerConfig,
        night_id: int | None = None,
        depends_on: Sequence[int] = (),
        log_tail: str = "",
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.params = dict(params)
        self.settings = settings
        self.attempt = attempt
        self.timeout_s = timeout_s
        self.night_id = night_id
        self.depends_on = list(depends_on)
        self.config = config
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._log = log_tail
        self._log_dirty = bool(log_tail)
        self._cancel = False
        self._lost = False
        self._last_progress_write = 0.0
        self._device: str | None = None

    # --- resources ---------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work on the job database: commits on success, rolls back on error.

        On SQLite the transaction takes the write lock up front (see
        :func:`jobs.state.write_lock`), so it never collides with heartbeats.
        """
        with session_scope(self.settings.resolved_database_url) as session:
            jobstate.bind(session, self.settings)
            jobstate.write_lock(session)
            yield session

    @cached_property
    def store(self) -> ObjectStore:
        from itloop.storage import get_store

        return get_store(self.settings.resolved_store_url)

    def device(self) -> str:
        """The torch device to use, resolved on first call (inside the job, never in the parent)."""
        if self._device is None:
            from itloop.settings import resolve_device

            self._device = resolve_device(self.settings.device)
        return self._device

    # --- reporting ---------------------------------------------------------------------

    def log(self, message: str) -> None:
        """Append a line to the job's stored log tail (bounded) and to the process log."""
        log.info("job %s (%s): %s", self.job_id, self.kind, message)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        with self._lock:
            self._log = (self._log + f"{stamp} {message}\n")[-self.config.log_tail_chars :]
            self._log_dirty = True

    def log_tail(self) -> str:
        with self._lock:
            return self._log

    def take_dirty_log(self) -> str | None:
        """The log tail if it changed since the last write, for the heartbeat to store."""
        with self._lock:
            if not self._log_dirty:
                return None
            self._log_dirty = False
            return self._log

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1]; written at most every ``progress_every_s``; also checks cancellation."""
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_progress_write >= self.config.progress_every_s:
            self._last_progress_write = now
            with session_scope(self.settings.resolved_database_url) as session:
                ours, cancel = jobstate.touch(
                    session,
                    self.job_id,
                    self.attempt,
                    progress=fraction,
                    message=message,
                    log_tail=self.take_dirty_log(),
                )
            self.note_lease(ours, cancel)
        self.check_cancelled()

    def note_lease(self, ours: bool, cancel: bool) -> None:
        """Called by heartbeats and progress writes with what the row says."""
        if not ours:
            self._lost = True
        if cancel:
            self._cancel = True

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled`, :class:`JobLost` or :class:`JobTimeout` when the job must stop."""
        if self._lost:
            raise JobLost(f"job {self.job_id} was taken over after its heartbeat went stale")
        if self._cancel:
            raise JobCancelled(f"job {self.job_id} cancelled on request")
        if self.elapsed_s() > self.timeout_s:
            raise JobTimeout(f"timed out after {self.timeout_s} s")

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    # --- the DAG -----------------------------------------------------------------------

    def dependency_results(self) -> dict[int, dict[str, Any]]:
        """Results of the jobs this one depends on, by job id."""
        if not self.depends_on:
            return {}
        with self.session() as session:
            rows = session.execute(select(Job.id, Job.result).where(Job.id.in_(self.depends_on))).all()
        return {i: dict(r or {}) for i, r in rows}

    def results_of(self, kind: str) -> list[dict[str, Any]]:
        """Results of the dependencies of one kind (e.g. every ``night.refit``), in job-id order."""
        if not self.depends_on:
            return []
        with self.session() as session:
            rows = session.execute(
                select(Job.result).where(Job.id.in_(self.depends_on), Job.kind == kind).order_by(Job.id)
            ).all()
        return [dict(r or {}) for (r,) in rows]

    def submit(
        self, kind: str, params: dict[str, Any] | None = None, *, depends_on: Sequence[int] = ()
    ) -> int:
        """Submit another job (in this job's night); returns its id. Enqueued when this call returns."""
        with self.session() as session:
            job = jobstate.submit(
                session, kind, params, depends_on=depends_on, night_id=self.night_id, settings=self.settings
            )
            return job.id

    def spawn(self, kind: str, params_list: Sequence[dict[str, Any]]) -> list[int]:
        """Fan out: submit child jobs that run now, and make this job's dependents wait for them too.

        The join is whatever already depends on this job: it starts once this job
        and every child succeeded, and fails if a child fails for good.
        """
        with self.session() as session:
            ids = [
                jobstate.submit(session, kind, p, night_id=self.night_id, settings=self.settings).id
                for p in params_list
            ]
            jobstate.splice_before_dependents(session, self.job_id, ids)
        return ids
