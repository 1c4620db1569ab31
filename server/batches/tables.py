"""Stimulus batches: what a rig shows on one day, frozen into a manifest at publication."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, JSONType, utcnow


class BatchState:
    building = "building"
    published = "published"
    failed = "failed"
    withdrawn = "withdrawn"


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (Index(None, "rig_pk", "state", "published_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(120), unique=True)
    rig_pk: Mapped[int] = mapped_column(ForeignKey("rigs.id", ondelete="RESTRICT"))
    day: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(20), default=BatchState.building)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"))
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    notes: Mapped[str] = mapped_column(default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # When the batch's own rig first fetched it (GET /rigs/{rig_id}/batches/next): the morning's
    # "has the rig pulled today's batch" is a fact on record, not a guess from later events.
    pulled_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchImage(Base):
    __tablename__ = "batch_images"

    batch_pk: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), default="clean")


class SequenceItem(Base):
    __tablename__ = "sequence_items"
    __table_args__ = (UniqueConstraint("batch_pk", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int]
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    trial: Mapped[int]
    on_ms: Mapped[int] = mapped_column(default=100)
    off_ms: Mapped[int] = mapped_column(default=100)
