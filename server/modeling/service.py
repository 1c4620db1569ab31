"""Model versions: the worker records every fit with its per-site metrics; the dashboard reads them."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from server.db.paging import paginate
from server.jobs.tables import Night
from server.lab.tables import Site
from server.modeling.tables import ModelVersion, SiteMetric

METRIC_FIELDS = (
    "predictivity",
    "ceiled_predictivity",
    "noise_ceiling",
    "transfer_sign",
    "transfer_r",
    "transfer_n",
    "transfer_slope",
    "transfer_r_low",
    "transfer_r_high",
    "transfer_sign_low",
    "transfer_sign_high",
    "chosen_for_site",
    "choice_reason",
    "alpha",
    "drift",
    "gated",
    "gate_reason",
)


def _finite(value: Any) -> Any:
    """JSON cannot carry NaN: store non-finite floats as NULL."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def get(*, session: Session, version: str) -> ModelVersion:
    mv = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if mv is None:
        raise NotFound(f"no model version {version!r}")
    return mv


def record_model_version(
    *,
    session: Session,
    version: str,
    candidate: str,
    backbone: str,
    checkpoint_sha256: str | None,
    layer: str,
    pool: str,
    artifact_key: str,
    trained_on: dict[str, Any],
    metrics: dict[str, Any],
    score: float | None,
    site_metrics: list[dict[str, Any]],
    parent_id: int | None = None,
) -> ModelVersion:
    """Store one fitted model and its per-site metrics (``site_id`` plus any of ``METRIC_FIELDS``)."""
    if session.scalar(select(ModelVersion.id).where(ModelVersion.version == version)) is not None:
        raise Conflict(f"model version {version!r} already exists; versions are immutable")
    wanted = sorted({str(m["site_id"]) for m in site_metrics if "site_id" in m})
    if len(wanted) != len(site_metrics):
        raise InvalidInput("every site metric needs a distinct site_id")
    site_pk = {
        sid: pk for sid, pk in session.execute(select(Site.site_id, Site.id).where(Site.site_id.in_(wanted)))
    }
    unknown = [s for s in wanted if s not in site_pk]
    if unknown:
        raise InvalidInput(f"unknown site id(s) in site_metrics: {', '.join(unknown[:10])}")
    mv = ModelVersion(
        version=version,
        candidate=candidate,
        backbone=backbone,
        checkpoint_sha256=checkpoint_sha256,
        layer=layer,
        pool=pool,
        artifact_key=artifact_key,
        trained_on=dict(trained_on),
        metrics={k: _finite(v) for k, v in metrics.items()},
        score=_finite(None if score is None else float(score)),
        parent_id=parent_id,
    )
    session.add(mv)
    session.flush()
    for m in site_metrics:
        extra = set(m) - set(METRIC_FIELDS) - {"site_id"}
        if extra:
            raise InvalidInput(f"unknown site metric field(s): {', '.join(sorted(extra))}")
        fields = {
            k: _finite(float(v)) if isinstance(v, float) else v
            for k, v in m.items()
            if k != "site_id" and v is not None
        }
        session.add(SiteMetric(model_version_id=mv.id, site_pk=site_pk[str(m["site_id"])], **fields))
    session.flush()
    return mv


def choose(*, session: Session, model_version: ModelVersion | str, reason: str) -> ModelVersion:
    """Mark a version as the one used (tonight); earlier choices stay recorded."""
    mv = get(session=session, version=model_version) if isinstance(model_version, str) else model_version
    mv.chosen = True
    mv.chosen_reason = reason
    session.flush()
    return mv


def list_versions(
    *,
    session: Session,
    chosen: bool | None = None,
    night: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ModelVersion], int]:
    """Newest first; ``night`` matches versions used by that night or fitted for it (trained_on.night)."""
    query = select(ModelVersion)
    if chosen is not None:
        query = query.where(ModelVersion.chosen.is_(chosen))
    if night is not None:
        used = select(Night.model_version_id).where(Night.id == night, Night.model_version_id.is_not(None))
        query = query.where(
            or_(ModelVersion.id.in_(used), ModelVersion.trained_on["night"].as_integer() == night)
        )
    order = [ModelVersion.created_at.desc(), ModelVersion.id.desc()]
    rows, total = paginate(session, query, order_by=order, limit=limit, offset=offset)
    return [r[0] for r in rows], total


def describe(*, session: Session, mv: ModelVersion) -> dict[str, Any]:
    parent = session.get(ModelVersion, mv.parent_id) if mv.parent_id else None
    return {
        "id": mv.id,
        "version": mv.version,
        "candidate": mv.candidate,
        "backbone": mv.backbone,
        "checkpoint_sha256": mv.checkpoint_sha256,
        "layer": mv.layer,
        "pool": mv.pool,
        "artifact_key": mv.artifact_key,
        "parent_version": parent.version if parent else None,
        "trained_on": mv.trained_on or {},
        "metrics": mv.metrics or {},
        "score": mv.score,
        "chosen": mv.chosen,
        "chosen_reason": mv.chosen_reason,
        "created_at": mv.created_at,
    }


def _metric_dict(site_id: str, m: SiteMetric) -> dict[str, Any]:
    return {"site_id": site_id, **{k: getattr(m, k) for k in METRIC_FIELDS}}


def site_metrics(*, session: Session, mv: ModelVersion) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Site.site_id, SiteMetric)
        .join(Site, Site.id == SiteMetric.site_pk)
        .where(SiteMetric.model_version_id == mv.id)
        .order_by(Site.site_id)
    ).all()
    return [_metric_dict(sid, m) for sid, m in rows]


def site_history(*, session: Session, site_id: str) -> list[dict[str, Any]]:
    """One site's metrics across versions, oldest first."""
    if session.scalar(select(Site.id).where(Site.site_id == site_id)) is None:
        raise NotFound(f"no site {site_id!r}")
    rows = session.execute(
        select(SiteMetric, ModelVersion)
        .join(ModelVersion, ModelVersion.id == SiteMetric.model_version_id)
        .join(Site, Site.id == SiteMetric.site_pk)
        .where(Site.site_id == site_id)
        .order_by(ModelVersion.created_at, ModelVersion.id)
    ).all()
    return [
        {
            **_metric_dict(site_id, m),
            "version": mv.version,
            "chosen": mv.chosen,
            "score": mv.score,
            "created_at": mv.created_at,
        }
        for m, mv in rows
    ]
