"""Read shapes for sensitivity results and population curves."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ResultRead(BaseModel):
    id: int
    session_id: str | None
    day: int | None
    site_id: str | None
    model_version: str | None
    source: str
    epsilon: float | None
    estimator: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_pairs: int | None
    n_sites: int | None
    undefined_reason: str | None
    created_at: datetime


class CurvePoint(BaseModel):
    epsilon: float | None
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_pairs: int | None
    n_sites: int | None
    undefined_reason: str | None


class Curve(BaseModel):
    source: str
    estimator: str
    day: int | None
    model_version: str | None
    points: list[CurvePoint]


class Summary(BaseModel):
    curves: list[Curve]
