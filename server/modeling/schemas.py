"""Read shapes for model versions and their per-site screening metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class SiteMetricRead(BaseModel):
    site_id: str
    predictivity: float | None
    ceiled_predictivity: float | None
    noise_ceiling: float | None
    transfer_sign: float | None
    transfer_r: float | None
    alpha: float | None
    drift: bool
    gated: bool
    gate_reason: str


class ModelVersionRead(BaseModel):
    id: int
    version: str
    candidate: str
    backbone: str
    checkpoint_sha256: str | None
    layer: str
    pool: str
    artifact_key: str
    parent_version: str | None
    trained_on: dict[str, Any]
    metrics: dict[str, Any]
    score: float | None
    chosen: bool
    chosen_reason: str
    created_at: datetime


class ModelVersionDetail(ModelVersionRead):
    site_metrics: list[SiteMetricRead]


class SiteHistoryItem(SiteMetricRead):
    version: str
    chosen: bool
    score: float | None
    created_at: datetime


class SiteHistory(BaseModel):
    site_id: str
    items: list[SiteHistoryItem]
