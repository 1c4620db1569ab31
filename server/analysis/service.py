"""Sensitivity results: the worker stores them per night; the dashboard queries and plots them.

A record is per site (``site_id``) or for the population (``site_id`` None), per epsilon,
estimator, day and source (``'it'``, ``'model:<version>'``, ``'random'``...). Storing a
session's results replaces what that session had for the same sources, so a re-run night
never double counts.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.analysis.tables import AnalysisResult
from server.errors import InvalidInput
from server.lab.tables import Site
from server.modeling.tables import ModelVersion
from server.recordings.tables import RecordingSession

FLOAT_FIELDS = ("epsilon", "value", "ci_low", "ci_high")
INT_FIELDS = ("n_pairs", "n_sites")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def store_results(
    *,
    session: Session,
    records: list[dict[str, Any]],
    session_pk: int | None,
    day: int | None,
    model_version_id: int | None = None,
) -> int:
    """Replace the results of (session, source) for every source in ``records``; returns rows stored.

    ``source='model:<version>'`` rows get that version's id when ``model_version_id`` is not given.
    Non-finite numbers are stored as NULL (with ``undefined_reason`` 'non-finite' if none given).
    """
    sources = sorted({str(r.get("source", "it")) for r in records})
    site_ids = sorted({str(r["site_id"]) for r in records if r.get("site_id") is not None})
    site_pk = {
        s: pk for s, pk in session.execute(select(Site.site_id, Site.id).where(Site.site_id.in_(site_ids)))
    }
    unknown = [s for s in site_ids if s not in site_pk]
    if unknown:
        raise InvalidInput(f"unknown site id(s) in analysis results: {', '.join(unknown[:10])}")
    versions = sorted({s.split(":", 1)[1] for s in sources if s.startswith("model:")})
    version_pk = {
        v: pk
        for v, pk in session.execute(
            select(ModelVersion.version, ModelVersion.id).where(ModelVersion.version.in_(versions))
        )
    }
    for source in sources:
        where = [AnalysisResult.source == source]
        where.append(
            AnalysisResult.session_pk == session_pk
            if session_pk is not None
            else AnalysisResult.session_pk.is_(None)
        )
        if session_pk is None:
            where.append(AnalysisResult.day == day if day is not None else AnalysisResult.day.is_(None))
        session.execute(delete(AnalysisResult).where(*where))
    rows = []
    for r in records:
        if "estimator" not in r:
            raise InvalidInput("every analysis record needs an estimator")
        source = str(r.get("source", "it"))
        mv = model_version_id
        if mv is None and source.startswith("model:"):
            mv = version_pk.get(source.split(":", 1)[1])
        floats = {k: _float(r.get(k)) for k in FLOAT_FIELDS}
        reason = r.get("undefined_reason")
        if reason is None and r.get("value") is not None and floats["value"] is None:
            reason = "non-finite"
        rows.append(
            AnalysisResult(
                session_pk=session_pk,
                day=r.get("day", day),
                site_pk=site_pk[str(r["site_id"])] if r.get("site_id") is not None else None,
                model_version_id=mv,
                source=source,
                estimator=str(r["estimator"]),
                undefined_reason=reason,
                **floats,
                **{k: None if r.get(k) is None else int(r[k]) for k in INT_FIELDS},
            )
        )
    session.add_all(rows)
    session.flush()
    return len(rows)


IT_SOURCES = ("it", "it_to_date")  # measured: the day's own twins; every day's twins pooled


def check_filters(*, estimator: str | None = None, source: str | None = None) -> None:
    """422 for an estimator or source name no record can have, listing the valid ones.

    Otherwise a misspelt filter (``sign-corrected``) answers an empty list, which reads as "no
    results yet".
    """
    from models.sensitivity.records import ESTIMATORS

    if estimator is not None and estimator not in ESTIMATORS:
        raise InvalidInput(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if (
        source is not None
        and source not in IT_SOURCES
        and not (source.startswith("model:") and len(source) > 6)
    ):
        raise InvalidInput(
            f"unknown source {source!r}; valid: 'it' (the recorded sites, each day's own twins), "
            "'it_to_date' (every day's twins so far, pooled) or 'model:<version>' (a model version's "
            "own sensitivity, e.g. model:night3-resnet50)"
        )


def _query(
    *,
    site_id: str | None = None,
    population: bool | None = None,
    epsilon: float | None = None,
    estimator: str | None = None,
    day: int | None = None,
    source: str | None = None,
    model_version: str | None = None,
    session_id: str | None = None,
) -> Any:
    check_filters(estimator=estimator, source=source)
    query = (
        select(AnalysisResult, Site.site_id, ModelVersion.version, RecordingSession.session_id)
        .outerjoin(Site, Site.id == AnalysisResult.site_pk)
        .outerjoin(ModelVersion, ModelVersion.id == AnalysisResult.model_version_id)
        .outerjoin(RecordingSession, RecordingSession.id == AnalysisResult.session_pk)
    )
    if site_id is not None:
        query = query.where(Site.site_id == site_id)
    if population is not None:
        query = query.where(
            AnalysisResult.site_pk.is_(None) if population else AnalysisResult.site_pk.is_not(None)
        )
    if epsilon is not None:
        query = query.where(func.abs(AnalysisResult.epsilon - epsilon) < 1e-9)
    if estimator is not None:
        query = query.where(AnalysisResult.estimator == estimator)
    if day is not None:
        query = query.where(AnalysisResult.day == day)
    if source is not None:
        query = query.where(AnalysisResult.source == source)
    if model_version is not None:
        query = query.where(ModelVersion.version == model_version)
    if session_id is not None:
        query = query.where(RecordingSession.session_id == session_id)
    return query


def _row(
    result: AnalysisResult, site_id: str | None, version: str | None, session_id: str | None
) -> dict[str, Any]:
    return {
        "id": result.id,
        "session_id": session_id,
        "day": result.day,
        "site_id": site_id,
        "model_version": version,
        "source": result.source,
        "epsilon": result.epsilon,
        "estimator": result.estimator,
        "value": result.value,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n_pairs": result.n_pairs,
        "n_sites": result.n_sites,
        "undefined_reason": result.undefined_reason,
        "created_at": result.created_at,
    }


def list_results(
    *, session: Session, limit: int = 100, offset: int = 0, **filters: Any
) -> tuple[list[dict], int]:
    """Results matching the filters, by day, source, estimator, epsilon, site (population first)."""
    query = _query(**filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(
        AnalysisResult.day,
        AnalysisResult.source,
        AnalysisResult.estimator,
        AnalysisResult.epsilon,
        AnalysisResult.site_pk.is_not(None),
        Site.site_id,
        AnalysisResult.id,
    )
    rows = session.execute(ordered.limit(limit).offset(offset)).all()
    return [_row(*r) for r in rows], int(total)


def summary(
    *, session: Session, source: str | None = None, estimator: str | None = None, day: int | None = None
) -> list[dict[str, Any]]:
    """Population curves (rows with no site): one per (source, estimator, day), points by epsilon."""
    rows, _ = list_results(
        session=session, limit=1_000_000, population=True, source=source, estimator=estimator, day=day
    )
    curves: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["source"], r["estimator"], r["day"])
        curve = curves.setdefault(
            key,
            {
                "source": r["source"],
                "estimator": r["estimator"],
                "day": r["day"],
                "model_version": r["model_version"],
                "points": [],
            },
        )
        curve["points"].append(
            {
                k: r[k]
                for k in ("epsilon", "value", "ci_low", "ci_high", "n_pairs", "n_sites", "undefined_reason")
            }
        )
    return sorted(
        curves.values(), key=lambda c: (c["day"] if c["day"] is not None else -1, c["source"], c["estimator"])
    )
