"""Jobs and nights: follow background work, cancel it, start a night."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.batches.tables import Batch
from server.deps import ExperimenterUser, SessionDep, SettingsDep, ViewerUser
from server.jobs import service
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
from worker import night as night_pipeline

router = APIRouter(tags=["jobs"])

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]


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
    items, total = service.list_jobs(
        session, kind=kind, state=state, night_id=night, limit=limit, offset=offset
    )
    return JobPage(
        items=[JobSummary.model_validate(j) for j in items], total=total, limit=limit, offset=offset
    )


@router.get("/jobs/{job_id}", response_model=JobRead, summary="One job: state, progress, attempts, log tail")
def get_job(job_id: int, session: SessionDep, _: ViewerUser) -> JobRead:
    return JobRead.model_validate(service.get(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a job (experimenter)")
def cancel_job(job_id: int, session: SessionDep, _: ExperimenterUser) -> JobRead:
    return JobRead.model_validate(service.cancel(session, job_id))


def _summary_fields(session: Session, night: Night) -> dict[str, object]:
    jobs = service.night_jobs(session, night.id)
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
        "progress": service.night_progress(jobs),
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
    items, total = service.list_nights(session, limit=limit, offset=offset)
    summaries = []
    for night in items:
        fields = _summary_fields(session, night)
        fields.pop("_jobs")
        summaries.append(NightSummary(**fields))  # type: ignore[arg-type]
    return NightPage(items=summaries, total=total, limit=limit, offset=offset)


@router.get("/nights/{night_id}", response_model=NightRead, summary="One night: state, jobs, batch, error")
def get_night(night_id: int, session: SessionDep, _: ViewerUser) -> NightRead:
    return _night_read(session, service.get_night(session, night_id))


@router.post("/nights", response_model=NightRead, status_code=201, summary="Start a night (experimenter)")
def start_night(
    body: NightCreate, session: SessionDep, settings: SettingsDep, _: ExperimenterUser
) -> NightRead:
    night = night_pipeline.start_night(
        session, settings, session_id=body.session_id, params=body.params, refuse_late=True
    )
    return _night_read(session, night)
