"""Background housekeeping threads of long-running processes: liveness beats and the periodic reaper.

A worker's liveness lives in the database (``worker_beats``), not in Redis: ``/health`` must
still be able to say which workers are alive while Redis is down. ``itloop serve`` on the
embedded default runs its jobs in its own thread pool, so it beats as an ``inprocess`` worker
and runs the reaper every ``ITLOOP_REAP_EVERY_S`` itself: nothing else would recover the jobs
of a server that was killed.

The threads only exist in the process that starts them: a forked work horse does not inherit
them (``fork`` copies the calling thread only), and its database connections are its own
(``server.db.engine``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence

from itloop.settings import Settings
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.queue import get_runner
from jobs.reaper import reap_once
from server.db.engine import session_scope

log = logging.getLogger(__name__)


def process_name(kind: str) -> str:
    """``host:pid:kind``: the liveness row of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}"


class Periodic(threading.Thread):
    """Calls ``fn`` every ``every_s`` seconds until stopped; a failing call is logged, never fatal."""

    def __init__(self, name: str, every_s: float, fn: Callable[[], None], *, first_now: bool = True) -> None:
        super().__init__(name=name, daemon=True)
        self.every_s = every_s
        self.fn = fn
        self.first_now = first_now
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.first_now:
            self._call()
        while not self.stopped.wait(self.every_s):
            self._call()

    def _call(self) -> None:
        try:
            self.fn()
        except Exception:  # a database hiccup must not end housekeeping for good
            log.warning("%s failed; next try in %g s", self.name, self.every_s, exc_info=True)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=timeout_s)


class LivenessBeat(Periodic):
    """Writes this process's ``worker_beats`` row every ``every_s``; removes it on a clean stop."""

    def __init__(self, settings: Settings, kind: str, queues: Sequence[str], every_s: float) -> None:
        self.settings = settings
        self.kind = kind
        self.queues = list(queues)
        self.worker = process_name(kind)
        super().__init__(f"liveness-{kind}", every_s, self.beat)

    def beat(self) -> None:
        with session_scope(self.settings.resolved_database_url) as session:
            jobstate.beat_worker(session, self.worker, self.kind, self.queues)

    def stop(self, timeout_s: float = 5.0) -> None:
        super().stop(timeout_s)
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                jobstate.forget_worker(session, self.worker)
        except Exception:  # the row ages out of /health by itself
            log.debug("could not remove liveness row %s", self.worker, exc_info=True)


def start_liveness(settings: Settings, kind: str, queues: Sequence[str]) -> LivenessBeat:
    """Start beating for this process (``kind``: rq, polling or inprocess)."""
    beat = LivenessBeat(settings, kind, queues, get_worker_config().liveness_s)
    beat.start()
    return beat


def start_embedded_housekeeping(settings: Settings) -> list[Periodic]:
    """What ``itloop serve`` runs beside the API on the embedded default (in-process jobs).

    The reaper every ``ITLOOP_REAP_EVERY_S`` (its first pass at once): jobs of a killed server
    are running with a stale heartbeat, or queued in a thread pool that died with it; the
    reaper re-queues the first and re-enqueues the second (the in-process runner reports what
    its pool holds). And a liveness beat, so ``/health`` counts this server as a worker.
    """
    config = get_worker_config()
    runner = get_runner(settings)
    queues = [settings.queue_name, settings.gpu_queue_name]
    reaper = Periodic("reaper", config.reap_every_s, lambda: reap_once(settings, runner))
    reaper.start()
    return [reaper, start_liveness(settings, "inprocess", queues)]
