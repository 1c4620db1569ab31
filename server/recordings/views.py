"""Recording sessions, spike upload, responses and exports (thin routes over the service)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Response as HTTPResponse
from sqlalchemy import func, select

from server.body_limit import accepts_upload
from server.deps import ExperimenterUser, SessionDep, SettingsDep, ViewerUser
from server.errors import InvalidInput, ItloopError
from server.images.tables import Image
from server.images.views import get_app_store
from server.lab.tables import Site
from server.recordings import export, service
from server.recordings.schemas import (
    MAX_LIMIT,
    Counts,
    Page,
    ResponsePage,
    ResponseRow,
    SessionCreate,
    SessionRead,
    UploadResult,
)
from server.recordings.tables import Presentation, Response
from server.uploads import receive_files, run_bulk, scrub_paths, upload_folder

router = APIRouter(prefix="/sessions", tags=["recordings"])

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0)]
UPLOAD_FIELDS = ("file", "spikes", "presentations", "sync")
TABLE_HELP = "NWB only: the TimeIntervals table that holds the presentations (default `presentations`)"
SITE_MAP_HELP = (
    "NWB only: JSON object mapping unit names (unit_name column) or unit ids to registered site ids, "
    "for files whose units carry no site_id (NeuroConv/SpikeInterface); see docs/nwb-and-brainscore.md"
)


def _window(settings: Any, start: float | None, end: float | None) -> tuple[float, float]:
    default = settings.response_window_ms
    return (float(default[0] if start is None else start), float(default[1] if end is None else end))


@router.post(
    "",
    response_model=SessionRead,
    status_code=201,
    summary="Create a recording session",
    responses={200: {"model": SessionRead, "description": "the same session already existed (idempotent)"}},
)
def create_session(
    body: SessionCreate, session: SessionDep, _: ExperimenterUser, response: HTTPResponse
) -> SessionRead:
    rec, created = service.create_session(session=session, **body.model_dump())
    if not created:
        response.status_code = 200
    return SessionRead(**service.describe(session=session, rec=rec))


@router.get("", response_model=Page[SessionRead], summary="List sessions, newest first")
def list_sessions(
    session: SessionDep,
    _: ViewerUser,
    subject: str | None = None,
    state: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[SessionRead]:
    rows, total = service.list_sessions(
        session=session, subject=subject, state=state, limit=limit, offset=offset
    )
    items = [SessionRead(**service.describe(session=session, rec=r)) for r in rows]
    return Page[SessionRead](items=items, total=total, limit=limit, offset=offset)


@router.get("/{session_id}", response_model=SessionRead, summary="One session with its data counts")
def get_session(session_id: str, session: SessionDep, _: ViewerUser) -> SessionRead:
    rec = service.get_session(session=session, session_id=session_id)
    read = SessionRead(**service.describe(session=session, rec=rec))
    read.counts = Counts(**service.counts(session=session, session_pk=rec.id))
    return read


@router.post("/{session_id}/complete", response_model=SessionRead, summary="Mark the session complete")
def complete_session(session_id: str, session: SessionDep, _: ExperimenterUser) -> SessionRead:
    rec = service.complete_session(session=session, session_id=session_id)
    return SessionRead(**service.describe(session=session, rec=rec))


@router.post(
    "/{session_id}/spikes",
    response_model=UploadResult,
    response_model_exclude_none=True,  # alignment / rig_cross_check only where they apply
    summary="Upload spikes and presentations (NWB, or CSV/Parquet pair), or spikes and sync pulses",
    description="Multipart: one NWB file in field `file`, or `spikes` (site_id,time_s) and `presentations` "
    "(event_id,image_sha256,onset_s[,fixation_ok]) as CSV or Parquet. All-or-nothing. The same data "
    "again answers the same counts with `repeated: true`; different data for a session that has some "
    "is 409 unless `?replace=true`, which replaces it atomically. Presentations are cross-checked "
    "against the rig's events of the session's batch (a contradiction is a 422). **Sync mode**: instead "
    "of presentations, send the recorder's sync pulses, as a `sync` file (time_s[,stop_s]) or as "
    "`?sync_series=` naming a TimeSeries/TimeIntervals in the NWB `file`; the presentations are then "
    "the rig's events placed on the recorder's clock, and `alignment` reports the fit "
    "(docs/clock-alignment.md).",
)
@accepts_upload
async def upload_spikes(
    session_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: ExperimenterUser,
    replace: bool = False,
    window_start_ms: float | None = None,
    window_end_ms: float | None = None,
    presentations_table: Annotated[str | None, Query(max_length=200, description=TABLE_HELP)] = None,
    site_map: Annotated[str | None, Query(max_length=60_000, description=SITE_MAP_HELP)] = None,
    sync_series: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    refresh_hz: Annotated[float | None, Query(gt=1, lt=1000)] = None,
    sync_tolerance_ms: Annotated[float | None, Query(gt=0, le=100)] = None,
) -> UploadResult:
    window = _window(settings, window_start_ms, window_end_ms)
    nwb_options = service.nwb_options(presentations_table=presentations_table, site_map=site_map)
    # Body written and split off the event loop, parsed and stored in the bulk thread pool;
    # the folder goes away however the request ends (server.uploads).
    async with upload_folder() as folder:
        try:
            files = await receive_files(request, folder, UPLOAD_FIELDS)
            result = await run_bulk(
                lambda: service.ingest_files(
                    session=session,
                    session_id=session_id,
                    files=files,
                    window_ms=window,
                    replace=replace,
                    **nwb_options,
                    sync_series=sync_series,
                    refresh_hz=refresh_hz,
                    sync_tolerance_ms=sync_tolerance_ms,
                )
            )
        except ItloopError as exc:
            exc.detail = scrub_paths(exc.detail, folder)
            raise
    return UploadResult(**result)


@router.get("/{session_id}/responses", response_model=ResponsePage, summary="Responses (JSON, paginated)")
def list_responses(
    session_id: str,
    session: SessionDep,
    settings: SettingsDep,
    _: ViewerUser,
    site_id: str | None = None,
    window_start_ms: float | None = None,
    window_end_ms: float | None = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> ResponsePage:
    rec = service.get_session(session=session, session_id=session_id)
    window = _window(settings, window_start_ms, window_end_ms)
    query = (
        select(
            Presentation.event_id,
            Image.sha256,
            Site.site_id,
            Presentation.onset_s,
            Presentation.fixation_ok,
            Response.count,
            Response.rate_hz,
        )
        .join(Presentation, Presentation.id == Response.presentation_id)
        .join(Image, Image.id == Presentation.image_id)
        .join(Site, Site.id == Response.site_pk)
        .where(
            Response.session_pk == rec.id,
            Response.window_start_ms == window[0],
            Response.window_end_ms == window[1],
        )
    )
    if site_id is not None:
        query = query.where(Site.site_id == site_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if total == 0 and rec.upload_sha256 is not None and site_id is None:
        raise InvalidInput(
            f"no responses stored for window {window[0]:g}-{window[1]:g} ms; upload with that window "
            "or ask the worker to compute it"
        )
    rows = session.execute(
        query.order_by(Presentation.onset_s, Presentation.event_id, Site.site_id).limit(limit).offset(offset)
    ).all()
    items = [
        ResponseRow(
            event_id=r[0],
            image_sha256=r[1],
            site_id=r[2],
            onset_s=r[3],
            fixation_ok=r[4],
            count=r[5],
            rate_hz=r[6],
        )
        for r in rows
    ]
    return ResponsePage(items=items, total=int(total), limit=limit, offset=offset, window_ms=window)


@router.get(
    "/{session_id}/export.nwb",
    summary="The session as NWB 2, DANDI-ready (metadata, units, presentations, images, lineage)",
    response_class=HTTPResponse,
    responses={200: {"content": {"application/x-nwb": {}}}},
)
def export_nwb(session_id: str, session: SessionDep, settings: SettingsDep, _: ViewerUser) -> HTTPResponse:
    rec = service.get_session(session=session, session_id=session_id)
    data = export.build_nwb(session=session, recording=rec, store=get_app_store(settings))
    return HTTPResponse(
        data,
        media_type="application/x-nwb",
        headers={"Content-Disposition": f'attachment; filename="{session_id}.nwb"'},
    )


@router.get(
    "/{session_id}/responses.nc",
    summary="Responses as a Brain-Score assembly (netCDF3; presentation x neuroid x time_bin)",
    response_class=HTTPResponse,
    responses={200: {"content": {"application/x-netcdf": {}}}},
)
def export_assembly(
    session_id: str,
    session: SessionDep,
    settings: SettingsDep,
    _: ViewerUser,
    window_start_ms: float | None = None,
    window_end_ms: float | None = None,
) -> HTTPResponse:
    rec = service.get_session(session=session, session_id=session_id)
    window = _window(settings, window_start_ms, window_end_ms)
    data = export.assembly_netcdf(session=session, recording=rec, window_ms=window)
    return HTTPResponse(
        data,
        media_type="application/x-netcdf",
        headers={"Content-Disposition": f'attachment; filename="{session_id}-responses.nc"'},
    )
