"""A recording day: presentation events, spike trains and the responses derived from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, BigIntPK, JSONType, utcnow


class RecordingSession(Base):
    __tablename__ = "recording_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(String(120), unique=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="RESTRICT"), index=True)
    rig_pk: Mapped[int | None] = mapped_column(ForeignKey("rigs.id", ondelete="SET NULL"))
    batch_pk: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    day: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(20), default="open")
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)
    upload_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # NWB/DANDI session metadata, registered through the API or kept from an NWB upload
    # (docs/nwb-and-brainscore.md). The start time is ISO 8601 text so its offset survives SQLite.
    session_start_time: Mapped[str | None] = mapped_column(String(40), default=None)
    description: Mapped[str] = mapped_column(default="", server_default="")
    experimenter: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default="[]")
    institution: Mapped[str] = mapped_column(String(200), default="", server_default="")
    lab: Mapped[str] = mapped_column(String(200), default="", server_default="")
    keywords: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default="[]")
    # What the upload's file said that the lab inventory does not hold per session: subject
    # age/weight at the session, devices, electrode groups, electrodes by site, unit resolution.
    acquisition: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, server_default="{}")


class RigEvent(Base):
    """A presentation as reported live by the rig; idempotent by (batch, event_id)."""

    __tablename__ = "rig_events"
    __table_args__ = (UniqueConstraint("batch_pk", "event_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(120))
    seq: Mapped[int | None] = mapped_column(default=None)
    image_sha256: Mapped[str] = mapped_column(String(64))
    onset_s: Mapped[float] = mapped_column(Float)
    fixation_ok: Mapped[bool] = mapped_column(default=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Presentation(Base):
    """A presentation as recorded in an uploaded session file (the session clock's truth)."""

    __tablename__ = "presentations"
    __table_args__ = (
        UniqueConstraint("session_pk", "event_id"),
        Index(None, "session_pk", "image_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    session_pk: Mapped[int] = mapped_column(ForeignKey("recording_sessions.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(120))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    onset_s: Mapped[float] = mapped_column(Float)
    fixation_ok: Mapped[bool] = mapped_column(default=True)
    stop_s: Mapped[float | None] = mapped_column(Float, default=None)  # as uploaded; None when unknown


class SpikeTrain(Base):
    """All spikes of one site in one session, as little-endian float64 seconds.

    Spikes are only ever read whole per (session, site) to compute responses, so
    one row per train keeps ingest at array speed instead of one row per spike.
    """

    __tablename__ = "spike_trains"
    __table_args__ = (UniqueConstraint("session_pk", "site_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_pk: Mapped[int] = mapped_column(ForeignKey("recording_sessions.id", ondelete="CASCADE"))
    site_pk: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    n_spikes: Mapped[int]
    times: Mapped[bytes] = mapped_column(LargeBinary)


class Response(Base):
    """Spike count of one site for one presentation in one analysis window.

    Derived data, written only by ingest in the same transaction as its presentations
    and deleted with its session. Presentation and site are therefore plain indexed
    integers, not foreign keys: per-row FK lookups were most of the ingest time on
    PostgreSQL, and the unique constraint still makes recomputation idempotent.
    """

    __tablename__ = "responses"
    __table_args__ = (
        UniqueConstraint("presentation_id", "site_pk", "window_start_ms", "window_end_ms"),
        Index(None, "session_pk", "site_pk"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    session_pk: Mapped[int] = mapped_column(ForeignKey("recording_sessions.id", ondelete="CASCADE"))
    presentation_id: Mapped[int] = mapped_column(BigInteger)
    site_pk: Mapped[int]
    window_start_ms: Mapped[float] = mapped_column(Float)
    window_end_ms: Mapped[float] = mapped_column(Float)
    count: Mapped[int]
    rate_hz: Mapped[float] = mapped_column(Float)
