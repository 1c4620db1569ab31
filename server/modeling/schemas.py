"""Read shapes for model versions and their per-site screening metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SiteMetricRead(BaseModel):
    site_id: str
    predictivity: float | None
    ceiled_predictivity: float | None
    noise_ceiling: float | None
    transfer_sign: float | None
    transfer_r: float | None
    transfer_n: int | None = Field(
        None, description="twin pairs (any site's, any day's) on which transfer was measured at this site"
    )
    transfer_slope: float | None = Field(
        None, description="observed change per unit predicted change (1 = calibrated, 0 = no transfer)"
    )
    transfer_r_low: float | None = Field(None, description="95% CI of transfer_r (chance: 0)")
    transfer_r_high: float | None = None
    transfer_sign_low: float | None = Field(None, description="95% CI of transfer_sign (chance: 0.5)")
    transfer_sign_high: float | None = None
    chosen_for_site: bool = Field(
        False, description="this version (or an ensemble of it) made the site's twins"
    )
    choice_reason: str = Field("", description="why this source was chosen for the site, with its evidence")
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
