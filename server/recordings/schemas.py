"""Request and response shapes for recording sessions, uploads and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.lab.schemas import aware_or_none, iso_duration

T = TypeVar("T")

MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching the filters, and the window asked for."""

    items: list[T]
    total: int
    limit: int
    offset: int


class SessionBase(BaseModel):
    session_id: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._:-]+$")
    subject: str = Field(min_length=1, max_length=120, description="subject name")
    rig_id: str | None = None
    batch_id: str | None = None
    day: int | None = Field(default=None, ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)
    # NWB / DANDI session metadata (an NWB upload fills what is left empty here; see
    # docs/nwb-and-brainscore.md).
    session_start_time: datetime | None = Field(
        default=None, description="with a time zone offset; exported as NWB session_start_time"
    )
    description: str = Field(default="", max_length=10000, description="NWB session_description")
    experimenter: list[str] = Field(default_factory=list, max_length=50, description="'Last, First' each")
    institution: str = Field(default="", max_length=200)
    lab: str = Field(default="", max_length=200)
    keywords: list[str] = Field(default_factory=list, max_length=100)
    subject_age: str = Field(default="", max_length=40, description="ISO 8601 duration on this day")
    subject_weight: str = Field(default="", max_length=40, description="on this day, with unit: '9 kg'")

    _start = field_validator("session_start_time", mode="before")(aware_or_none)
    _age = field_validator("subject_age")(iso_duration)


class SessionCreate(SessionBase):
    pass


class Counts(BaseModel):
    sites: int
    presentations: int
    spikes: int
    responses: int


class SessionRead(SessionBase):
    model_config = ConfigDict(from_attributes=True)

    day: int | None = None
    state: str
    duration_s: float | None
    has_data: bool
    created_at: datetime
    completed_at: datetime | None
    counts: Counts | None = Field(default=None, description="only on the single-session read")
    ingest: dict[str, Any] = Field(default_factory=dict, description="how the spike data was ingested")


class UploadResult(BaseModel):
    session_id: str
    sites: int
    presentations: int
    spikes: int
    responses: int
    repeated: bool = Field(description="true when this exact data was already stored: nothing changed")
    replaced: bool = False
    window_ms: tuple[float, float]
    alignment: dict[str, Any] | None = Field(
        default=None,
        description="sync uploads: the clock map (offset_s, drift_ppm), residuals (ms), missing and extra "
        "pulses, late and dropped frames (docs/clock-alignment.md)",
    )
    rig_cross_check: dict[str, Any] | None = Field(
        default=None, description="uploads with presentations: how they compared with the rig's events"
    )


class ResponseRow(BaseModel):
    event_id: str
    image_sha256: str
    site_id: str
    onset_s: float
    fixation_ok: bool
    count: int
    rate_hz: float


class ResponsePage(Page[ResponseRow]):
    window_ms: tuple[float, float]
