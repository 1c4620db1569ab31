"""Jobs (the source of truth for all background work) and nights (one closed-loop iteration)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, JSONType, utcnow


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    waiting = "waiting"


# The states in which a night still holds its session: at most one such night per session,
# enforced by a partial unique index (both SQLite and PostgreSQL have them), so two
# concurrent starts cannot both win whatever the isolation level.
ACTIVE_NIGHT_WHERE = "state IN ('queued', 'running', 'waiting')"


class Night(Base):
    __tablename__ = "nights"
    __table_args__ = (
        Index(
            "uq_nights_active_session",
            "session_pk",
            unique=True,
            sqlite_where=text(ACTIVE_NIGHT_WHERE),
            postgresql_where=text(ACTIVE_NIGHT_WHERE),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_pk: Mapped[int] = mapped_column(
        ForeignKey("recording_sessions.id", ondelete="RESTRICT"), index=True
    )
    state: Mapped[str] = mapped_column(String(20), default=JobState.queued)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    deadline_at: Mapped[datetime | None] = mapped_column(default=None)
    batch_pk: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    partial: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str] = mapped_column(default="")
    error: Mapped[str | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index(None, "state", "queue"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    state: Mapped[str] = mapped_column(String(20), default=JobState.queued)
    queue: Mapped[str] = mapped_column(String(60), default="itloop")
    night_id: Mapped[int | None] = mapped_column(ForeignKey("nights.id", ondelete="CASCADE"), index=True)
    depends_on: Mapped[list[int]] = mapped_column(JSONType, default=list)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(default="")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    timeout_s: Mapped[int] = mapped_column(default=3600)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    log_tail: Mapped[str] = mapped_column(default="")
    error: Mapped[str | None] = mapped_column(default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WorkerBeat(Base):
    """A worker process's liveness, written by the process itself every few seconds.

    In the database, not in Redis, so that ``/health`` can still say which workers are
    alive while Redis is down (the case where it matters most).
    """

    __tablename__ = "worker_beats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # rq, polling or inprocess
    queues: Mapped[str] = mapped_column(String(400), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
