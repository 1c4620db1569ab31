"""Sensitivity results per site (or population), epsilon, day and estimator."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, utcnow


class AnalysisResult(Base):
    __tablename__ = "analysis_results"
    __table_args__ = (
        Index(None, "session_pk", "estimator"),
        Index(None, "site_pk", "epsilon"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_pk: Mapped[int | None] = mapped_column(ForeignKey("recording_sessions.id", ondelete="CASCADE"))
    day: Mapped[int | None] = mapped_column(default=None)
    site_pk: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(60), default="it")
    epsilon: Mapped[float | None] = mapped_column(Float, default=None)
    estimator: Mapped[str] = mapped_column(String(60))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    ci_low: Mapped[float | None] = mapped_column(Float, default=None)
    ci_high: Mapped[float | None] = mapped_column(Float, default=None)
    n_pairs: Mapped[int | None] = mapped_column(default=None)
    n_sites: Mapped[int | None] = mapped_column(default=None)
    undefined_reason: Mapped[str | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
