"""Response shapes for jobs and nights."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from itloop.night_params import NightParams
from server.jobs.tables import JobState
from server.paging import Page


class JobSummary(BaseModel):
    """A job as listed: enough to follow progress without the log or the result."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    state: JobState
    queue: str
    night_id: int | None
    depends_on: list[int]
    progress: float
    progress_message: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None = Field(description="one line: what went wrong (the log tail has the traceback)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobRead(JobSummary):
    """A job in full: params, result, heartbeat, worker and the tail of its log."""

    params: dict[str, Any]
    timeout_s: int
    worker: str | None
    heartbeat_at: datetime | None
    log_tail: str
    result: dict[str, Any] | None


class JobPage(Page[JobSummary]):
    """One page of JobSummary (:class:`server.paging.Page`)."""


class NightCreate(BaseModel):
    session_id: str = Field(min_length=1, max_length=120, description="the recording session of the day")
    params: NightParams = Field(
        default_factory=NightParams,
        description="the night's parameters; keys not given come from ITLOOP_NIGHT_DEFAULTS, then the "
        "defaults shown (docs/night-parameters.md)",
    )


class NightSummary(BaseModel):
    id: int
    session_id: str
    state: JobState
    progress: float
    batch_id: str | None
    partial: bool
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class NightRead(NightSummary):
    params: dict[str, Any]
    model_version_id: int | None
    note: str
    deadline_at: datetime | None
    jobs: list[JobSummary]


class NightPage(Page[NightSummary]):
    """One page of NightSummary (:class:`server.paging.Page`)."""
