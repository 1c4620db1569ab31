"""Read-only sensitivity results for the dashboard (the worker writes through the service)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from server.analysis import service
from server.analysis.schemas import Curve, ResultRead, Summary
from server.deps import Limit, Offset, SessionDep, ViewerUser
from server.paging import Page

router = APIRouter(prefix="/analysis", tags=["analysis"])


@router.get("/sensitivity", response_model=Page[ResultRead], summary="Sensitivity results (paginated)")
def list_sensitivity(
    session: SessionDep,
    _: ViewerUser,
    site_id: str | None = None,
    population: bool | None = Query(
        default=None, description="true: population rows only; false: sites only"
    ),
    epsilon: float | None = None,
    estimator: str | None = None,
    day: int | None = None,
    source: str | None = None,
    model_version: str | None = None,
    session_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[ResultRead]:
    rows, total = service.list_results(
        session=session,
        limit=limit,
        offset=offset,
        site_id=site_id,
        population=population,
        epsilon=epsilon,
        estimator=estimator,
        day=day,
        source=source,
        model_version=model_version,
        session_id=session_id,
    )
    return Page[ResultRead](items=[ResultRead(**r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/sensitivity/summary", response_model=Summary, summary="Population curves per source/estimator/day"
)
def sensitivity_summary(
    session: SessionDep,
    _: ViewerUser,
    source: str | None = None,
    estimator: str | None = None,
    day: int | None = None,
) -> Summary:
    curves = service.summary(session=session, source=source, estimator=estimator, day=day)
    return Summary(curves=[Curve(**c) for c in curves])
