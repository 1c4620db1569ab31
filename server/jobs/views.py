"""Jobs and nights: follow background work, cancel it, start a night."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.batches.tables import Batch
from server.deps import ExperimenterUser, Limit, Offset, SessionDep, SettingsDep, ViewerUser
from server.jobs.schemas import (
    JobPage,
    JobRead,
    JobSummary,
    NightCreate,
    NightPage,
    NightRead,
    NightSummary,
    night_timing,
)
from server.jobs.tables import JobState, Night
from server.recordings.tables import RecordingSession
from worker import api as jobs_api

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    _: ViewerUser,
    kind: str | None = None,
    state: JobState | None = None,
    night: Annotated[int | None, Query(description="only the jobs of this night")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobPage:
    items, total = jobs_api.list_jobs(
        session, kind=kind, state=state, night_id=night, limit=limit, offset=offset
    )
    return JobPage(
        items=[JobSummary.model_validate(j) for j in items], total=total, limit=limit, offset=offset
    )


@router.get("/jobs/{job_id}", response_model=JobRead, summary="One job: state, progress, attempts, log tail")
def get_job(job_id: int, session: SessionDep, _: ViewerUser) -> JobRead:
    return JobRead.model_validate(jobs_api.get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a job (experimenter)")
def cancel_job(job_id: int, session: SessionDep, _: ExperimenterUser) -> JobRead:
    return JobRead.model_validate(jobs_api.cancel_job(session, job_id))


def _summary_fields(session: Session, night: Night) -> dict[str, object]:
    jobs = jobs_api.night_jobs(session, night.id)
    session_id = session.scalar(
        select(RecordingSession.session_id).where(RecordingSession.id == night.session_pk)
    )
    batch_id = (
        session.scalar(select(Batch.batch_id).where(Batch.id == night.batch_pk)) if night.batch_pk else None
    )
    return {
        "id": night.id,
        "session_id": session_id or "",
        "state": night.state,
        "progress": jobs_api.night_progress(jobs),
        "batch_id": batch_id,
        "partial": night.partial,
        "error": night.error,
        "created_at": night.created_at,
        "finished_at": night.finished_at,
        "_jobs": jobs,
    }


def _night_read(session: Session, night: Night) -> NightRead:
    fields = _summary_fields(session, night)
    jobs = fields.pop("_jobs")
    return NightRead(
        **fields,  # type: ignore[arg-type]
        params=night.params,
        model_version_id=night.model_version_id,
        note=night.note,
        deadline_at=night.deadline_at,
        timing=night_timing(night.params.get("expected"), jobs),  # type: ignore[arg-type]
        jobs=[JobSummary.model_validate(j) for j in jobs],  # type: ignore[attr-defined]
    )


@router.get("/nights", response_model=NightPage, summary="List nights, newest first")
def list_nights(session: SessionDep, _: ViewerUser, limit: Limit = 50, offset: Offset = 0) -> NightPage:
    items, total = jobs_api.list_nights(session, limit=limit, offset=offset)
    summaries = []
    for night in items:
        fields = _summary_fields(session, night)
        fields.pop("_jobs")
        summaries.append(NightSummary(**fields))  # type: ignore[arg-type]
    return NightPage(items=summaries, total=total, limit=limit, offset=offset)


@router.get("/nights/{night_id}", response_model=NightRead, summary="One night: state, jobs, batch, error")
def get_night(night_id: int, session: SessionDep, _: ViewerUser) -> NightRead:
    return _night_read(session, jobs_api.get_night(session, night_id))


@router.post(
    "/nights",
    response_model=NightRead,
    status_code=201,
    summary="Start a night (experimenter)",
    description="Starts the night's jobs for a completed (or any) recording session. `params` are "
    "typed (see `NightParams`): only the keys given are stored, the rest come from the lab defaults "
    "(`ITLOOP_NIGHT_DEFAULTS`) and then the documented defaults. An unknown key or candidate, or an "
    "impossible value, is a 422 naming it; a night already active for the session is a 409.",
)
def start_night(
    body: NightCreate, session: SessionDep, settings: SettingsDep, _: ExperimenterUser
) -> NightRead:
    params = body.params.model_dump(exclude_unset=True)
    night = jobs_api.start_night(
        session, settings, session_id=body.session_id, params=params, refuse_late=True
    )
    return _night_read(session, night)
