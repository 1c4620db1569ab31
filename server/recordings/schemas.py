"""Request and response shapes for recording sessions, uploads and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.paging import Page


class SessionBase(BaseModel):
    session_id: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._:-]+$")
    subject: str = Field(min_length=1, max_length=120, description="subject name")
    rig_id: str | None = None
    batch_id: str | None = None
    day: int | None = Field(default=None, ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)


class SessionCreate(SessionBase):
    pass


class Counts(BaseModel):
    sites: int
    presentations: int
    spikes: int
    responses: int


class AutoNightRead(BaseModel):
    """What completing the session did about its night (the lab setting ``ITLOOP_AUTO_NIGHT``)."""

    enabled: bool = Field(description="whether completing a session starts its night (ITLOOP_AUTO_NIGHT)")
    night_id: int | None = Field(default=None, description="the night it started; null when none")
    note: str | None = Field(
        default=None, description="why no night started, or what the night changed (e.g. candidates)"
    )


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
    auto_night: AutoNightRead | None = Field(
        default=None, description="only on the answer of the first completion: the night it started"
    )


class UploadResult(BaseModel):
    session_id: str
    sites: int
    presentations: int
    spikes: int
    responses: int
    repeated: bool = Field(description="true when this exact data was already stored: nothing changed")
    replaced: bool = False
    window_ms: tuple[float, float]


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
