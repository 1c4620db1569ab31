"""``itloop worker``: an RQ worker when Redis is configured, else a worker that polls the database."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rq import SimpleWorker, Worker

from itloop.settings import Settings
from server.db.engine import session_scope
from worker.config import get_worker_config
from worker.queue import InProcessRunner, RQRunner, get_runner
from worker.recovery import reap
from worker.registry import load_job_modules

log = logging.getLogger(__name__)


def reap_once(settings: Settings, runner: InProcessRunner | RQRunner) -> None:
    """One reaper pass in its own transaction; a failure is logged, never fatal to the worker."""
    try:
        with session_scope(settings.resolved_database_url) as session:
            reap(session, runner)
    except Exception:  # noqa: BLE001
        log.exception("reaper pass failed")


class _ReapingMixin:
    """RQ's periodic maintenance hook also runs our reaper."""

    itloop_settings: Settings
    itloop_runner: RQRunner

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        reap_once(self.itloop_settings, self.itloop_runner)


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
    if isinstance(runner, RQRunner):
        return _run_rq(settings, runner, names, burst=burst, simple=burst if simple is None else simple)
    return _run_polling(settings, runner, names, burst=burst)


def _run_rq(settings: Settings, runner: RQRunner, names: list[str], *, burst: bool, simple: bool) -> int:
    config = get_worker_config()
    cls: Any = ReapingSimpleWorker if simple else ReapingWorker
    interval = max(1, int(config.reap_every_s))
    worker = cls(
        [runner.queue(n) for n in names],
        connection=runner.redis,
        maintenance_interval=interval,
        worker_ttl=max(20, interval + 15),  # RQ's blocking dequeue returns every ttl-15 s to run maintenance
    )
    worker.itloop_settings = settings
    worker.itloop_runner = runner
    log.info("RQ worker %s on queues %s (burst=%s)", worker.name, ", ".join(names), burst)
    worker.work(burst=burst, logging_level=settings.log_level.upper())
    return 0


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
