"""Versioned site models and their per-site screening metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, JSONType, utcnow


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(120), unique=True)
    candidate: Mapped[str] = mapped_column(String(120), default="")
    backbone: Mapped[str] = mapped_column(String(120))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    layer: Mapped[str] = mapped_column(String(120))
    pool: Mapped[str] = mapped_column(String(20), default="avg")
    artifact_key: Mapped[str] = mapped_column(String(400))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    trained_on: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    chosen: Mapped[bool] = mapped_column(default=False)
    chosen_reason: Mapped[str] = mapped_column(default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SiteMetric(Base):
    __tablename__ = "site_metrics"
    __table_args__ = (UniqueConstraint("model_version_id", "site_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    site_pk: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    predictivity: Mapped[float | None] = mapped_column(Float, default=None)
    ceiled_predictivity: Mapped[float | None] = mapped_column(Float, default=None)
    noise_ceiling: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_sign: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_r: Mapped[float | None] = mapped_column(Float, default=None)
    # Transfer evidence over every twin shown so far (models.transfer.site_transfer).
    transfer_n: Mapped[int | None] = mapped_column(default=None)
    transfer_slope: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_r_low: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_r_high: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_sign_low: Mapped[float | None] = mapped_column(Float, default=None)
    transfer_sign_high: Mapped[float | None] = mapped_column(Float, default=None)
    # Whether this version made the site's twins tonight, and why (models.selection).
    chosen_for_site: Mapped[bool] = mapped_column(default=False, server_default=false())
    choice_reason: Mapped[str] = mapped_column(default="", server_default="")
    alpha: Mapped[float | None] = mapped_column(Float, default=None)
    drift: Mapped[bool] = mapped_column(default=False)
    gated: Mapped[bool] = mapped_column(default=False)
    gate_reason: Mapped[str] = mapped_column(default="")
