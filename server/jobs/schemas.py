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


class NightTiming(BaseModel):
    """The plan's expected synthesis time against the actual one (``worker/night_plan.py``)."""

    expected_synthesis_s: float | None = Field(description="planned before the night started")
    available_s: float | None = Field(description="time to the deadline margin at the start; null: none")
    budget: int | None = Field(description="gradient evaluations per case the plan chose")
    throughput_source: str | None = Field(
        description="'last night', 'measured' (cached per model) or 'default'"
    )
    actual_synthesis_s: float | None = Field(
        description="first synthesis shard's start to the last one's end; null until all finished"
    )
    actual_over_expected: float | None


class NightRead(NightSummary):
    params: dict[str, Any]
    model_version_id: int | None
    note: str
    deadline_at: datetime | None
    timing: NightTiming | None = None
    jobs: list[JobSummary]


class NightPage(Page[NightSummary]):
    """One page of NightSummary (:class:`server.paging.Page`)."""


def night_timing(expected: dict[str, Any] | None, jobs: list[Any]) -> NightTiming | None:
    """Expected against actual synthesis time, from the night's recorded plan and its shard jobs."""
    if not isinstance(expected, dict):
        return None
    shards = [j for j in jobs if j.kind == "night.synthesize"]
    actual = None
    if shards and all(j.started_at and j.finished_at for j in shards):
        actual = (max(j.finished_at for j in shards) - min(j.started_at for j in shards)).total_seconds()
    exp = expected.get("expected_s")
    return NightTiming(
        expected_synthesis_s=exp,
        available_s=expected.get("available_s"),
        budget=expected.get("budget"),
        throughput_source=expected.get("throughput_source"),
        actual_synthesis_s=actual,
        actual_over_expected=actual / exp if actual is not None and exp else None,
    )
