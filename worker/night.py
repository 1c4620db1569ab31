"""The nightly pipeline as a DAG of jobs, and ``itloop night``.

Stages (job kinds), each one job unless said otherwise::

    night.responses                 spike trains -> responses of the day
      -> night.refit  x candidates  one job per candidate model (night params "candidates",
                                    default ITLOOP_NIGHT_CANDIDATES)
      -> night.select               screen the refits, pick tonight's model; its result's
                                    "shards" (a list of param dicts) fans out into
      -> night.synthesize x shards  one job per shard (params: the shard's dict + "shard", "n_shards")
      -> night.assemble             waits for every shard
      -> night.schedule -> night.publish -> night.analyze

This module only wires the DAG. The stage functions are registered under those
kinds from :mod:`worker.stages` with :func:`jobs.registry.job`; each has the
signature ``fn(ctx: JobContext) -> dict`` and finds in ``ctx.params`` at least
``night_id``, ``session_id`` (the lab's id), ``session_pk`` and ``night_params``.
Results of upstream stages come from ``ctx.results_of(kind)`` /
``ctx.dependency_results()``. A night's state follows its jobs: the first job that
fails for good fails the night (its error is the night's error) and cancels the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NightActive, NotFound, Unavailable
from itloop.night_params import NightConfig, NightParams, describe_errors
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.queue import InProcessRunner, get_runner
from jobs.registry import get_spec, load_job_modules, on_success
from server.db.engine import session_scope
from server.jobs.tables import Job, JobState, Night
from server.recordings.tables import RecordingSession
from worker import night_plan
from worker.candidates import SEARCH, resolve

if TYPE_CHECKING:
    from itloop.settings import Settings

log = logging.getLogger(__name__)

RESPONSES = "night.responses"
REFIT = "night.refit"
SELECT = "night.select"
SYNTHESIZE = "night.synthesize"
ASSEMBLE = "night.assemble"
SCHEDULE = "night.schedule"
PUBLISH = "night.publish"
ANALYZE = "night.analyze"
STAGES = (RESPONSES, REFIT, SELECT, SYNTHESIZE, ASSEMBLE, SCHEDULE, PUBLISH, ANALYZE)


def missing_stages() -> list[str]:
    """Stage kinds with no registered function (the stages are installed from worker.stages)."""
    return [kind for kind in STAGES if get_spec(kind) is None]


def start_night(
    session: Session,
    settings: Settings,
    *,
    session_id: str,
    params: dict[str, Any] | None = None,
    validate: bool = True,
    refuse_late: bool = False,
) -> Night:
    """Create a night for a recording session and submit its DAG (enqueued when ``session`` commits).

    ``validate`` checks the params (:class:`~itloop.night_params.NightParams` and the candidate
    registry) and swaps missing-checkpoint default candidates for checkpoint-free ones (the
    night's note says so); only tests that replace every stage with stubs turn it off. Routes
    and session completion call this through :func:`worker.api.start_night`.
    ``refuse_late`` (``POST /nights``) refuses a night that cannot fit before its deadline
    (:mod:`worker.night_plan`); nights started on their own publish what is done in time.
    """
    jobstate.write_lock(session)
    rec = session.scalar(select(RecordingSession).where(RecordingSession.session_id == session_id))
    if rec is None:
        raise NotFound(f"no recording session {session_id!r}")
    missing = missing_stages()
    if missing:
        raise Unavailable(f"the night's stages are not installed: no job function for {', '.join(missing)}")
    _refuse_if_active(session, rec.id, session_id)
    jobstate.bind(session, settings)
    params = dict(params or {})
    note = _check_params(params, settings) if validate else ""
    deadline = params.get("deadline") or settings.night_defaults.get("deadline") or _next_rig_time(settings)
    if deadline:
        params["deadline"] = deadline
    if validate:
        params = night_plan.apply_plan(session, settings, rec, params, refuse_late=refuse_late)
    night = Night(
        session_pk=rec.id,
        state=JobState.queued,
        params={"session_id": session_id, **params},
        note=note,
        deadline_at=datetime.fromisoformat(deadline) if deadline else None,
    )
    try:
        # A savepoint: if the insert loses to a concurrent start, the request's transaction
        # stays usable to say which night won.
        with session.begin_nested():
            session.add(night)
            session.flush()
    except IntegrityError:
        _refuse_if_active(session, rec.id, session_id)
        raise NightActive(f"another night for session {session_id!r} is already active") from None
    plan_night(session, night, settings)
    return night


def _refuse_if_active(session: Session, session_pk: int, session_id: str) -> None:
    """409 when the session already has an active night.

    A courtesy check for a clear message; the guarantee is the partial unique index
    ``uq_nights_active_session``, which makes the losing one of two concurrent starts fail
    its insert (PostgreSQL waits for the winner to commit, SQLite serialises writers).
    """
    active = session.scalar(
        select(Night).where(
            Night.session_pk == session_pk,
            Night.state.in_(jobstate.ACTIVE_STATES),
        )
    )
    if active is not None:
        raise NightActive(f"night {active.id} for session {session_id!r} is already {active.state}")


def _next_rig_time(settings: Settings) -> str | None:
    """The next ``ITLOOP_RIG_TIME`` (server local time) as ISO: when the rig wants its batch."""
    if not settings.rig_time:
        return None
    hour, minute = (int(x) for x in settings.rig_time.split(":"))
    now = datetime.now().astimezone()
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= now:
        at += timedelta(days=1)
    return at.isoformat()


def _check_params(params: dict[str, Any], settings: Settings) -> str:
    """Refuse bad night params up front (422 naming the key), not later inside a job.

    Unknown keys (a misspelt ``epsilon`` would otherwise silently run the default) and unknown
    candidate models are refused here, as are values out of range.
    """
    unknown = NightConfig.unknown_keys(params)
    if unknown:
        known = ", ".join(sorted(NightConfig.model_fields))
        raise InvalidInput(f"unknown night param(s): {', '.join(unknown)}; known: {known}")
    try:
        NightParams.model_validate({k: v for k, v in params.items() if k != "session_id"})
        cfg = NightConfig.from_params(params, settings.night_defaults)
    except ValidationError as exc:
        raise InvalidInput(f"night params: {describe_errors(exc)}") from None
    for spec in cfg.candidates or get_worker_config().night_candidates:
        resolve(spec)  # InvalidInput naming the unknown candidate
    if cfg.candidates is None:
        return _fall_back_without_checkpoints(params, settings)
    return ""


def _fall_back_without_checkpoints(params: dict[str, Any], settings: Settings) -> str:
    """Default candidates whose checkpoint file is missing give way to checkpoint-free ones.

    Only when neither the night nor the lab named candidates: then the night uses
    ``ITLOOP_FALLBACK_CANDIDATES`` instead of failing hours later on a missing file, and its note
    says which file to put where. Candidates named explicitly are never replaced.
    """
    config = get_worker_config()
    missing = []
    for name in config.night_candidates:
        path = resolve(name).checkpoint_path(settings.data_dir)
        if path is not None and not path.is_file():
            missing.append(f"{name} needs {path}")
    if not missing:
        return ""
    params["candidates"] = list(config.fallback_candidates)
    note = (
        f"default candidates without their checkpoint files ({'; '.join(missing)}): this night "
        f"uses the checkpoint-free {', '.join(config.fallback_candidates)} instead "
        "(put the files there, or `itloop models`, to use the defaults)"
    )
    log.warning("%s", note)
    return note


def _search_share(params: dict[str, Any], settings: Settings) -> float:
    return NightConfig.from_params(params, settings.night_defaults).search_share


def plan_night(session: Session, night: Night, settings: Settings) -> dict[str, list[int]]:
    """Submit the night's static DAG; synthesis shards are added when ``night.select`` succeeds."""
    base: dict[str, Any] = {
        "night_id": night.id,
        "session_id": night.params.get("session_id"),
        "session_pk": night.session_pk,
        "night_params": dict(night.params),
    }
    candidates = list(night.params.get("candidates") or get_worker_config().night_candidates)
    if not candidates:
        raise Conflict("a night needs at least one candidate model to refit")
    if _search_share(night.params, settings) > 0 and SEARCH not in candidates:
        candidates.append(SEARCH)  # the across-day search is fitted like a candidate

    def add(kind: str, deps: list[int], **extra: Any) -> int:
        job = jobstate.submit(
            session, kind, {**base, **extra}, depends_on=deps, night_id=night.id, settings=settings
        )
        return job.id

    plan: dict[str, list[int]] = {}
    plan[RESPONSES] = [add(RESPONSES, [])]
    plan[REFIT] = [add(REFIT, plan[RESPONSES], candidate=c) for c in candidates]
    plan[SELECT] = [add(SELECT, plan[REFIT])]
    plan[ASSEMBLE] = [add(ASSEMBLE, plan[SELECT])]
    plan[SCHEDULE] = [add(SCHEDULE, plan[ASSEMBLE])]
    plan[PUBLISH] = [add(PUBLISH, plan[SCHEDULE])]
    plan[ANALYZE] = [add(ANALYZE, plan[PUBLISH])]
    log.info("night %s planned: %s", night.id, {k: len(v) for k, v in plan.items()})
    return plan


@on_success(SELECT)
def fan_out_synthesis(session: Session, job: Job, result: dict[str, Any], settings: Settings) -> None:
    """One ``night.synthesize`` job per shard of the select result; ``night.assemble`` waits for all."""
    shards = result.get("shards") or []
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise TypeError("night.select must return 'shards' as a list of dicts")
    keys = ("night_id", "session_id", "session_pk", "night_params")
    base: dict[str, Any] = {k: job.params[k] for k in keys if k in job.params}
    ids = [
        jobstate.submit(
            session,
            SYNTHESIZE,
            {**base, **shard, "shard": i, "n_shards": len(shards)},
            depends_on=[job.id],
            night_id=job.night_id,
            settings=settings,
        ).id
        for i, shard in enumerate(shards)
    ]
    jobstate.splice_before_dependents(session, job.id, ids)


# --- CLI ---------------------------------------------------------------------------------


def _snapshot(settings: Settings, night_id: int) -> tuple[str, float, str, str | None]:
    with session_scope(settings.resolved_database_url) as session:
        night = jobstate.get_night(session, night_id)
        jobs = jobstate.night_jobs(session, night_id)
        running = [j for j in jobs if j.state == JobState.running]
        doing = ", ".join(f"{j.kind} {j.progress_message}".strip() for j in running[:2])
        return night.state, jobstate.night_progress(jobs), doing, night.error


def run_night_cli(
    settings: Settings,
    *,
    session_id: str,
    wait: bool = True,
    poll_s: float = 0.5,
    params: dict[str, Any] | None = None,
) -> int:
    """Start a night; with ``wait``, run it (in-process) or watch it (RQ) with a progress bar. 0 = success."""
    from tqdm import tqdm

    settings.ensure_dirs()
    load_job_modules()
    runner = get_runner(settings, background=False)
    with session_scope(settings.resolved_database_url) as session:
        jobstate.bind(session, settings, runner)
        night_id = start_night(session, settings, session_id=session_id, params=params).id
    log.info("night %s started for session %s", night_id, session_id)
    if not wait:
        return 0

    done = threading.Event()
    errors: list[BaseException] = []
    if isinstance(runner, InProcessRunner):

        def _drive() -> None:
            try:
                runner.run_until_idle()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=_drive, name="itloop-night", daemon=True).start()

    terminal = (JobState.succeeded, JobState.failed, JobState.cancelled)
    with tqdm(
        total=100, desc=f"night {night_id}", unit="%", bar_format="{l_bar}{bar}| {elapsed}{postfix}"
    ) as bar:
        while True:
            state, fraction, doing, error = _snapshot(settings, night_id)
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(doing or state)
            if state in terminal or done.is_set():
                break
            time.sleep(poll_s)
        state, fraction, _, error = _snapshot(settings, night_id)
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(state)
    if errors:
        raise errors[0]
    if state == JobState.succeeded:
        log.info("night %s succeeded", night_id)
        return 0
    log.error("night %s %s: %s", night_id, state, error or "jobs left that no worker here can run")
    return 1
