"""The seam: the only module of ``worker/`` and ``jobs/`` that ``server/`` imports.

HTTP routes need a handful of things from the job system and the night, and this module is
the whole list, so the server never reaches into either (``tests/test_layering.py`` enforces it):

- :func:`start_night`: the one call that starts a night, from ``POST /nights`` and from
  :func:`night_after_session_complete` (``ITLOOP_AUTO_NIGHT``);
- :func:`cancel_job`;
- the read side of jobs and nights for the routes that list them (:func:`get_job`,
  :func:`list_jobs`, :func:`get_night`, :func:`list_nights`, :func:`night_jobs`,
  :func:`night_progress`) and the live workers for ``/health`` (:func:`live_workers`);
- the night's parameters (:class:`NightParams`, re-exported from :mod:`itloop.night_params`).

Everything here takes the request's SQLAlchemy session; jobs submitted on it are enqueued when
it commits (:mod:`jobs.queue`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from itloop.errors import ItloopError, NightActive
from itloop.night_params import NightConfig, NightParams
from jobs import state as jobstate
from jobs.config import get_worker_config
from server.jobs.tables import Job, Night, WorkerBeat
from worker import night as night_pipeline

if TYPE_CHECKING:
    from itloop.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "AutoNight",
    "NightConfig",
    "NightParams",
    "cancel_job",
    "get_job",
    "get_night",
    "list_jobs",
    "list_nights",
    "live_workers",
    "night_after_session_complete",
    "night_jobs",
    "night_progress",
    "stale_after_s",
    "start_night",
]

get_job = jobstate.get
list_jobs = jobstate.list_jobs
get_night = jobstate.get_night
list_nights = jobstate.list_nights
night_jobs = jobstate.night_jobs
night_progress = jobstate.night_progress


def start_night(
    session: Session,
    settings: Settings,
    *,
    session_id: str,
    params: dict[str, Any] | None = None,
    refuse_late: bool = False,
) -> Night:
    """Create a night for a recording session and submit its jobs (enqueued when ``session`` commits).

    Bad params (unknown keys or candidates, impossible values) are an ``InvalidInput`` naming them;
    a night already active for the session is a ``NightActive`` (a ``Conflict``); with
    ``refuse_late``, a night whose plan cannot end before its deadline even at the smallest
    budget is a ``Conflict`` that gives the expected and the available time (``POST /nights``;
    automatic nights publish what is done).
    """
    return night_pipeline.start_night(
        session, settings, session_id=session_id, params=params, refuse_late=refuse_late
    )


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a job: at once if it has not started, else by a flag the running job polls."""
    return jobstate.cancel(session, job_id)


def stale_after_s() -> float:
    """``ITLOOP_STALE_AFTER_S``: a worker (or running job) silent this long is presumed dead."""
    return get_worker_config().stale_after_s


def live_workers(session: Session) -> list[WorkerBeat]:
    """Worker processes (and an embedded server) seen within :func:`stale_after_s`."""
    return jobstate.alive_workers(session, stale_after_s())


@dataclass(frozen=True)
class AutoNight:
    """What completing a session did about the night (shown in the completion's answer)."""

    enabled: bool
    night_id: int | None = None
    note: str | None = None


def night_after_session_complete(session: Session, settings: Settings, *, session_id: str) -> AutoNight:
    """Start the session's night with the lab defaults when ``ITLOOP_AUTO_NIGHT`` is on.

    Never blocks the completion: a night that cannot start (one already active, the stages
    missing) is logged and reported in the answer's ``note`` instead.
    """
    if not settings.auto_night:
        return AutoNight(enabled=False)
    try:
        # A savepoint: a refusal must not spoil the completion's transaction.
        with session.begin_nested():
            night = start_night(session, settings, session_id=session_id)
    except ItloopError as exc:
        # The session's own night already running is the normal case when the lab started it
        # (POST /nights) before completing the session; anything else deserves attention.
        level = logging.INFO if isinstance(exc, NightActive) else logging.WARNING
        log.log(level, "no night started for session %s: %s", session_id, exc.detail)
        return AutoNight(enabled=True, note=f"no night started: {exc.detail}")
    log.info("session %s complete: night %s submitted", session_id, night.id)
    return AutoNight(enabled=True, night_id=night.id, note=night.note or None)
