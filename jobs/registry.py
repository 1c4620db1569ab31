"""Job kinds: module-level functions registered by name, with their queue, timeout and retries.

A job function takes a :class:`jobs.context.JobContext` and returns a JSON-able
dict::

    from jobs.registry import job

    @job("night.refit", queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)
    def refit(ctx: JobContext) -> dict:
        ...
        return {"model_version_id": 12}

The queue names are logical: ``"itloop"`` maps to ``settings.queue_name`` and
``"itloop-gpu"`` to ``settings.gpu_queue_name``. Kinds are found by importing
:mod:`worker.night` and :mod:`worker.stages` (``ITLOOP_JOB_MODULES``) and every module listed in
``ITLOOP_EXTRA_JOB_MODULES``
(comma-separated; tests use it to add kinds that sleep, fail or write markers).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from jobs.config import get_worker_config

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from itloop.settings import Settings
    from jobs.context import JobContext
    from server.jobs.tables import Job

JobFn = Callable[["JobContext"], dict[str, Any] | None]
SuccessHook = Callable[["Session", "Job", dict[str, Any], "Settings"], None]
QueueKind = Literal["itloop", "itloop-gpu"]


@dataclass(frozen=True)
class JobSpec:
    """What the runner needs to know about a kind besides its function."""

    kind: str
    fn: JobFn
    queue: QueueKind = "itloop"
    timeout_s: int | None = None  # None: settings.job_timeout_s
    max_attempts: int | None = None  # None: settings.job_max_attempts


JOBS: dict[str, JobSpec] = {}
# Called inside the transaction that records a job's success, before its dependents are
# released: the place for infrastructure fan-out (e.g. one synthesis job per shard).
SUCCESS_HOOKS: dict[str, list[SuccessHook]] = {}

_loaded = False
_load_lock = threading.Lock()


def job(
    kind: str,
    *,
    queue: QueueKind = "itloop",
    timeout_s: int | None = None,
    max_attempts: int | None = None,
) -> Callable[[JobFn], JobFn]:
    """Register a module-level function as the implementation of ``kind``."""
    if queue not in ("itloop", "itloop-gpu"):
        raise ValueError(f"queue must be 'itloop' or 'itloop-gpu', not {queue!r}")

    def _register(fn: JobFn) -> JobFn:
        existing = JOBS.get(kind)
        same = existing is not None and (
            existing.fn.__module__,
            existing.fn.__qualname__,
        ) == (fn.__module__, fn.__qualname__)
        if existing is not None and not same:
            raise ValueError(
                f"job kind {kind!r} is already registered by "
                f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            )
        if "<locals>" in fn.__qualname__:
            raise ValueError(f"job {kind!r}: job functions must be module-level, not {fn.__qualname__}")
        JOBS[kind] = JobSpec(kind=kind, fn=fn, queue=queue, timeout_s=timeout_s, max_attempts=max_attempts)
        return fn

    return _register


def on_success(kind: str) -> Callable[[SuccessHook], SuccessHook]:
    """Register ``hook(session, job, result, settings)`` to run when a job of ``kind`` succeeds."""

    def _register(fn: SuccessHook) -> SuccessHook:
        hooks = SUCCESS_HOOKS.setdefault(kind, [])
        if fn not in hooks:
            hooks.append(fn)
        return fn

    return _register


def load_job_modules() -> None:
    """Import the modules that register kinds: ``ITLOOP_JOB_MODULES`` and ``ITLOOP_EXTRA_JOB_MODULES``."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        config = get_worker_config()
        names = [
            m.strip() for m in f"{config.job_modules},{config.extra_job_modules}".split(",") if m.strip()
        ]
        for name in names:
            importlib.import_module(_current_name(name))
        _loaded = True


#: Modules that moved: a deployment that still names the old path in ``ITLOOP_JOB_MODULES`` keeps
#: working (with a warning) instead of failing every night at the first job.
_RENAMED_MODULES = {"worker.steps": "worker.stages"}


def _current_name(name: str) -> str:
    new = _RENAMED_MODULES.get(name)
    if new is None:
        return name
    log.warning("ITLOOP_JOB_MODULES names %s, which is now %s; update the setting", name, new)
    return new


def get_spec(kind: str) -> JobSpec | None:
    """The spec registered for ``kind``, after loading every job module; None when unknown."""
    load_job_modules()
    return JOBS.get(kind)


@contextmanager
def overridden(functions: Mapping[str, JobFn], **spec_fields: Any) -> Iterator[None]:
    """Temporarily run ``functions`` for their kinds in this process (tests of pipelines)."""
    load_job_modules()
    saved = {kind: JOBS.get(kind) for kind in functions}
    try:
        for kind, fn in functions.items():
            base = saved[kind] or JobSpec(kind=kind, fn=fn)
            JOBS[kind] = replace(base, fn=fn, **spec_fields)
        yield
    finally:
        for kind, spec in saved.items():
            if spec is None:
                JOBS.pop(kind, None)
            else:
                JOBS[kind] = spec
