"""Read-only model-version API for the dashboard (the worker writes through the service)."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import Limit, Offset, SessionDep, ViewerUser
from server.modeling import service
from server.modeling.schemas import (
    ModelVersionDetail,
    ModelVersionRead,
    SiteHistory,
    SiteHistoryItem,
    SiteMetricRead,
)
from server.paging import Page

router = APIRouter(prefix="/model-versions", tags=["modeling"])


@router.get("", response_model=Page[ModelVersionRead], summary="Model versions, newest first")
def list_versions(
    session: SessionDep,
    _: ViewerUser,
    chosen: bool | None = None,
    night: int | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ModelVersionRead]:
    rows, total = service.list_versions(
        session=session, chosen=chosen, night=night, limit=limit, offset=offset
    )
    items = [ModelVersionRead(**service.describe(session=session, mv=mv)) for mv in rows]
    return Page[ModelVersionRead](items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/sites/{site_id}/history", response_model=SiteHistory, summary="One site's metrics across versions"
)
def site_history(site_id: str, session: SessionDep, _: ViewerUser) -> SiteHistory:
    items = [SiteHistoryItem(**row) for row in service.site_history(session=session, site_id=site_id)]
    return SiteHistory(site_id=site_id, items=items)


@router.get("/{version}", response_model=ModelVersionDetail, summary="One version with per-site metrics")
def get_version(version: str, session: SessionDep, _: ViewerUser) -> ModelVersionDetail:
    mv = service.get(session=session, version=version)
    metrics = [SiteMetricRead(**m) for m in service.site_metrics(session=session, mv=mv)]
    return ModelVersionDetail(**service.describe(session=session, mv=mv), site_metrics=metrics)
