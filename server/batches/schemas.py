"""Shapes of the rig contract (DESIGN.md section 5): manifests, presentation events, batch listings.

Field names here are fixed by the contract; fields may be added, never renamed.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from itloop.sha256 import Sha256
from server.paging import Page
from server.recordings.ingest.validate import MAX_EVENT_ID_CHARS, MAX_PLAUSIBLE_S, PRINTABLE


class ManifestImage(BaseModel):
    sha256: Sha256
    url: str
    width: int
    height: int
    bytes: int


class ManifestItem(BaseModel):
    seq: int
    image_sha256: Sha256
    trial: int
    on_ms: int
    off_ms: int


class CalibrationRef(BaseModel):
    path: str = Field(description="where the bundle holds the pattern, e.g. calibration/pattern.png")
    sha256: str
    width: int
    height: int
    bytes: int


class Display(BaseModel):
    """The display a batch is made for (``server.batches.display``); null where the rig did not say."""

    screen_px: list[int] | None = None
    refresh_hz: float | None = None
    frame_ms: float | None = None
    distance_cm: float | None = None
    width_cm: float | None = None
    deg_per_px: float | None = None
    image_px: list[int] | None = None
    image_deg: list[float] | None = None
    scaling: str = ""
    gamma: str = ""
    calibration: CalibrationRef | None = None


class Manifest(BaseModel):
    """Immutable once published. ``display`` was added later: older manifests have none."""

    batch_id: str
    rig_id: str
    published_at: datetime
    model_version: str | None
    day: int | None = None
    notes: str = ""
    images: list[ManifestImage]
    sequence: list[ManifestItem]
    display: Display | None = None

    @field_serializer("published_at")
    def _iso(self, value: datetime) -> str:
        # datetime.isoformat ("+00:00"), as every manifest frozen so far was written
        return value.isoformat()


class PresentationEvent(BaseModel):
    """One stimulus presentation as the rig saw it; ``event_id`` makes posting idempotent.

    Onsets obey the rules spike uploads obey (``server.recordings.ingest.validate``): finite,
    >= 0 and at most ``MAX_PLAUSIBLE_S`` seconds on the session clock.
    """

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(
        min_length=1,
        max_length=MAX_EVENT_ID_CHARS,
        pattern=PRINTABLE,
        description='e.g. f"{batch_id}:{seq}"; no control characters',
    )
    seq: int | None = Field(default=None, description="the manifest sequence entry shown")
    image_sha256: Sha256 = Field()
    onset_s: float = Field(
        allow_inf_nan=False,
        ge=0,
        le=MAX_PLAUSIBLE_S,
        description=f"onset on the session clock, seconds (0 to {MAX_PLAUSIBLE_S:g})",
    )
    fixation_ok: bool = True


class PresentationResult(BaseModel):
    received: int
    new: int
    repeated: int


class BatchBase(BaseModel):
    batch_id: str
    rig_id: str
    day: int
    state: str
    notes: str = ""


class BatchRead(BatchBase):
    model_version: str | None = None
    n_images: int
    n_sequence: int
    created_at: datetime
    published_at: datetime | None
    completed_at: datetime | None
    pulled_at: datetime | None = Field(
        default=None, description="when the batch's rig first fetched it (GET /rigs/{rig_id}/batches/next)"
    )


class BatchPage(Page[BatchRead]):
    """One page of BatchRead (:class:`server.paging.Page`)."""


class CompleteResult(BaseModel):
    batch_id: str
    completed_at: datetime
    events: int = Field(description="presentation events stored for the batch")


class InitialBatchCreate(BaseModel):
    """Day 0: the registered clean and reference images, no perturbations (no model exists yet)."""

    batch_id: str | None = Field(default=None, min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._:-]+$")
    repeats: int = Field(default=4, ge=1, le=100)
    on_ms: int = Field(default=100, gt=0, le=10_000)
    off_ms: int = Field(default=100, ge=0, le=10_000)
    images_per_trial: int = Field(default=8, ge=1, le=1000)
    seed: int = 0
    clean_images: int | None = Field(
        default=None,
        ge=1,
        description="show only the first this many clean images (set order); the nights' fresh_clean "
        "brings in the rest. None: all of them",
    )
