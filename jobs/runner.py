"""``itloop worker``: an RQ worker when Redis is configured, else a worker that polls the database."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested

from itloop.settings import Settings
from jobs.config import get_worker_config
from jobs.liveness import start_liveness
from jobs.queue import InProcessRunner, RQRunner, get_runner
from jobs.reaper import reap_once
from jobs.registry import load_job_modules

log = logging.getLogger(__name__)


class _ReapingMixin:
    """Our additions to RQ's worker: the reaper in its maintenance, and Redis outages survived mid-job."""

    itloop_settings: Settings
    itloop_runner: RQRunner

    def run_maintenance_tasks(self) -> None:
        # The reaper first: it needs only the database, so it runs even while Redis is down
        # (RQ's own maintenance then fails and the dequeue loop backs off).
        reap_once(self.itloop_settings, self.itloop_runner)
        super().run_maintenance_tasks()  # type: ignore[misc]

    def maintain_heartbeats(self, job: Any) -> None:
        # RQ beats to Redis while a work horse runs. Redis being away must not end the worker
        # (and orphan the horse): the job keeps running, and its heartbeat that counts is in
        # the database (jobs.execute).
        try:
            super().maintain_heartbeats(job)  # type: ignore[misc]
        except redis.exceptions.RedisError as exc:
            name = type(exc).__name__
            log.warning("Redis unreachable while job %s runs (%s); the job goes on", job.id, name)


class ReapingWorker(_ReapingMixin, Worker):
    """Forks a work horse per job: memory (and GPU memory) is returned after each job."""


class ReapingSimpleWorker(_ReapingMixin, SimpleWorker):
    """Runs jobs in the worker process itself: for --burst runs and tests."""


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str] | None = None,
    burst: bool = False,
    simple: bool | None = None,
) -> int:
    """Serve ``queues`` (default: the CPU and GPU queues) until stopped, or until idle with ``burst``."""
    settings.ensure_dirs()
    load_job_modules()
    names = list(queues or dict.fromkeys([settings.queue_name, settings.gpu_queue_name]))
    runner = get_runner(settings, background=False)
    reap_once(settings, runner)
    rq = isinstance(runner, RQRunner)
    beat = start_liveness(settings, "rq" if rq else "polling", names)
    try:
        if isinstance(runner, RQRunner):
            return _run_rq(settings, runner, names, burst=burst, simple=burst if simple is None else simple)
        return _run_polling(settings, runner, names, burst=burst)
    finally:
        beat.stop()


def _run_rq(settings: Settings, runner: RQRunner, names: list[str], *, burst: bool, simple: bool) -> int:
    """Run an RQ worker; when it ends on an error (Redis gone, above all), wait and start another.

    RQ's own dequeue loop already retries a lost connection, but much else in its worker (its
    Redis heartbeat after a job, registering birth and death, job bookkeeping when a horse ends)
    raises, and the worker quits: a Redis restart used to take every worker down with it. Here the
    process stays: it waits for any work horse still running (the job records its outcome in the
    database, which is the truth), then builds a fresh worker, with waits that start at 1 s and
    double up to ``ITLOOP_REDIS_RETRY_MAX_S``. Jobs whose enqueueing failed meanwhile are queued in
    the database; the reaper puts them back on Redis once it is reachable.
    """
    config = get_worker_config()
    cls: Any = ReapingSimpleWorker if simple else ReapingWorker
    interval = max(1, int(config.reap_every_s))
    wait_s = 1.0
    while True:
        started = time.monotonic()
        worker = None
        try:
            worker = cls(
                [runner.queue(n) for n in names],
                connection=runner.redis,
                maintenance_interval=interval,
                # RQ's blocking dequeue returns every ttl-15 s to run maintenance
                worker_ttl=max(20, interval + 15),
            )
            worker.max_connection_wait_time = config.redis_retry_max_s
            worker.itloop_settings = settings
            worker.itloop_runner = runner
            log.info("RQ worker %s on queues %s (burst=%s)", worker.name, ", ".join(names), burst)
            worker.work(burst=burst, logging_level=settings.log_level.upper())
            if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
                return 0  # burst done, or asked to stop (SIGTERM/SIGINT)
            log.warning("RQ worker %s ended on an error; starting another in %g s", worker.name, wait_s)
        except (StopRequested, SystemExit, KeyboardInterrupt):
            return 0
        except redis.exceptions.RedisError as exc:
            log.warning("Redis unreachable (%s); trying again in %g s", type(exc).__name__, wait_s)
        finally:
            if worker is not None:
                _let_go(worker)
        if time.monotonic() - started > 60:
            wait_s = 1.0  # it had been up a while: this is a new outage
        try:
            time.sleep(wait_s)
        except (StopRequested, SystemExit, KeyboardInterrupt):
            return 0
        wait_s = min(wait_s * 2, config.redis_retry_max_s)


def _let_go(worker: Any) -> None:
    """After an RQ worker ended: wait for its work horse, stop its pub/sub thread, restore signals."""
    pid = getattr(worker, "_horse_pid", 0)
    if pid:
        log.warning("waiting for work horse %s to finish its job", pid)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        worker._horse_pid = 0
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        thread.stop()
        thread.join(timeout=1)
        with contextlib.suppress(Exception):
            worker.pubsub.close()
    # Between two RQ workers, a stop request ends the process cleanly (its liveness row removed).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _run_polling(settings: Settings, runner: InProcessRunner, names: list[str], *, burst: bool) -> int:
    config = get_worker_config()
    log.info("DB-polling worker on queues %s (burst=%s; no ITLOOP_REDIS_URL)", ", ".join(names), burst)
    last_reap = time.monotonic()
    while True:
        done = runner.run_until_idle(names)
        if burst:
            log.info("DB-polling worker idle after %d job(s); exiting (burst)", done)
            return 0
        if time.monotonic() - last_reap >= config.reap_every_s:
            reap_once(settings, runner)
            last_reap = time.monotonic()
        if not done:
            time.sleep(config.poll_s)
