"""Lab registration routes: experimenters create subjects, arrays and sites; admins register rigs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from server.deps import AdminUser, CurrentUser, ExperimenterUser, SessionDep, ViewerUser
from server.errors import InvalidInput
from server.lab import service
from server.lab.schemas import (
    ArrayCreate,
    ArrayPage,
    ArrayRead,
    RigCreate,
    RigPage,
    RigRead,
    SiteCreate,
    SitePage,
    SiteRead,
    SiteRegistration,
    SubjectCreate,
    SubjectPage,
    SubjectRead,
)
from server.lab.tables import Array, Rig, Site

router = APIRouter(tags=["lab"])

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def _array_read(array: Array, n_sites: int = 0) -> ArrayRead:
    return ArrayRead(
        id=array.id,
        name=array.name,
        region=array.region,
        hemisphere=array.hemisphere,
        device=array.device,
        manufacturer=array.manufacturer,
        description=array.description,
        subject=array.subject.name,
        n_sites=n_sites,
        created_at=array.created_at,
    )


def _site_read(site: Site) -> SiteRead:
    return SiteRead(
        id=site.id,
        site_id=site.site_id,
        array=site.array.name,
        subject=site.array.subject.name,
        electrode=site.electrode,
        unit=site.unit,
        meta=site.meta,
        active=site.active,
        x=site.x,
        y=site.y,
        z=site.z,
        location=site.location,
        created_at=site.created_at,
    )


def _rig_read(rig: Rig, subject: str | None) -> RigRead:
    return RigRead(
        id=rig.id,
        rig_id=rig.rig_id,
        name=rig.name,
        screen=rig.screen,
        subject=subject,
        created_at=rig.created_at,
    )


@router.post("/subjects", response_model=SubjectRead, status_code=201, summary="Create a subject")
def create_subject(body: SubjectCreate, session: SessionDep, _: ExperimenterUser) -> SubjectRead:
    subject = service.create_subject(session=session, **body.model_dump())
    out = SubjectRead.model_validate(subject)
    session.commit()  # before the answer: a client that got 201 can rely on it
    return out


@router.get("/subjects", response_model=SubjectPage, summary="List subjects")
def list_subjects(session: SessionDep, _: ViewerUser, limit: Limit = 100, offset: Offset = 0) -> SubjectPage:
    rows, total = service.list_subjects(session=session, limit=limit, offset=offset)
    items = [SubjectRead.model_validate(s) for s in rows]
    return SubjectPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/subjects/{name}", response_model=SubjectRead, summary="One subject")
def get_subject(name: str, session: SessionDep, _: ViewerUser) -> SubjectRead:
    return SubjectRead.model_validate(service.get_subject(session=session, name=name))


@router.post(
    "/subjects/{name}/arrays", response_model=ArrayRead, status_code=201, summary="Add an array to a subject"
)
def create_subject_array(name: str, body: ArrayCreate, session: SessionDep, _: ExperimenterUser) -> ArrayRead:
    array = service.create_array(session=session, subject=name, **body.model_dump(exclude={"subject"}))
    out = _array_read(array, len(array.sites))
    session.commit()
    return out


@router.get("/subjects/{name}/arrays", response_model=ArrayPage, summary="Arrays of one subject")
def list_subject_arrays(
    name: str, session: SessionDep, _: ViewerUser, limit: Limit = 100, offset: Offset = 0
) -> ArrayPage:
    service.get_subject(session=session, name=name)
    rows, total = service.list_arrays(session=session, subject=name, limit=limit, offset=offset)
    return ArrayPage(items=[_array_read(a, n) for a, n in rows], total=total, limit=limit, offset=offset)


@router.post("/arrays", response_model=ArrayRead, status_code=201, summary="Create an array (give subject)")
def create_array(body: ArrayCreate, session: SessionDep, _: ExperimenterUser) -> ArrayRead:
    if not body.subject:
        raise InvalidInput("subject: required when creating an array through /arrays")
    array = service.create_array(session=session, **body.model_dump())
    out = _array_read(array, len(array.sites))
    session.commit()
    return out


@router.get("/arrays", response_model=ArrayPage, summary="List arrays, optionally of one subject")
def list_arrays(
    session: SessionDep, _: ViewerUser, subject: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> ArrayPage:
    rows, total = service.list_arrays(session=session, subject=subject, limit=limit, offset=offset)
    return ArrayPage(items=[_array_read(a, n) for a, n in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/sites",
    response_model=SiteRegistration,
    status_code=201,
    summary="Register sites in bulk (idempotent; conflicting data is 409)",
    responses={200: {"description": "every site already existed with the same data"}},
)
def register_sites(
    body: Annotated[list[SiteCreate], Body(min_length=1, max_length=10000)],
    session: SessionDep,
    _: ExperimenterUser,
    response: Response,
) -> SiteRegistration:
    sites, created = service.register_sites(session=session, sites=[s.model_dump() for s in body])
    if created == 0:
        response.status_code = 200
    items = [_site_read(s) for s in sites]
    session.commit()
    return SiteRegistration(created=created, existing=len(body) - created, items=items)


@router.get("/sites", response_model=SitePage, summary="List sites (filter by array, subject, active)")
def list_sites(
    session: SessionDep,
    _: ViewerUser,
    array: str | None = None,
    subject: str | None = None,
    active: bool | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> SitePage:
    rows, total = service.list_sites(
        session=session, array=array, subject=subject, active=active, limit=limit, offset=offset
    )
    return SitePage(items=[_site_read(s) for s in rows], total=total, limit=limit, offset=offset)


@router.get("/sites/{site_id}", response_model=SiteRead, summary="One site by its stable site_id")
def get_site(site_id: str, session: SessionDep, _: ViewerUser) -> SiteRead:
    return _site_read(service.get_site(session=session, site_id=site_id))


@router.post("/rigs", response_model=RigRead, status_code=201, summary="Register a rig (admin)")
def create_rig(body: RigCreate, session: SessionDep, _: AdminUser) -> RigRead:
    rig = service.create_rig(
        session=session, rig_id=body.rig_id, name=body.name, subject=body.subject, screen=body.screen
    )
    out = _rig_read(rig, body.subject)
    session.commit()
    return out


@router.get("/rigs", response_model=RigPage, summary="List rigs (any role)")
def list_rigs(session: SessionDep, _: CurrentUser, limit: Limit = 100, offset: Offset = 0) -> RigPage:
    rows, total = service.list_rigs(session=session, limit=limit, offset=offset)
    names = service.subject_names(session=session, ids={r.subject_id for r in rows if r.subject_id})
    items = [_rig_read(r, names.get(r.subject_id) if r.subject_id else None) for r in rows]
    return RigPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/rigs/{rig_id}", response_model=RigRead, summary="One rig (any role)")
def get_rig(rig_id: str, session: SessionDep, _: CurrentUser) -> RigRead:
    rig = service.get_rig(session=session, rig_id=rig_id)
    names = service.subject_names(session=session, ids={rig.subject_id} if rig.subject_id else set())
    return _rig_read(rig, names.get(rig.subject_id) if rig.subject_id else None)
