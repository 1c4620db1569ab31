"""Tidy records of sensitivity figures, one per site (or population), epsilon, day and estimator."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ESTIMATORS", "SensitivityEstimate", "to_records"]

ESTIMATORS = (
    "plain",
    "sign_corrected",
    "plain_noise_corrected",
    "noise_floor",
    "random_pair",
    "model_free_plain",
    "model_free_sign_corrected",
    "model",
)


@dataclass(frozen=True)
class SensitivityEstimate:
    """One figure: a site (or the population) at one epsilon, by one estimator.

    Attributes
    ----------
    site_id : hashable or None
        None for the population mean over sites.
    epsilon : float or None
        None for figures that do not depend on epsilon (``random_pair``).
    estimator : str
        One of :data:`ESTIMATORS`.
    value, ci_low, ci_high : float
        Estimate and percentile bootstrap interval; NaN when undefined.
    n_pairs : int
        Items behind the figure: pairs, or clean images for ``random_pair``;
        summed over the sites used for a population figure.
    n_sites : int
        Sites behind the figure (0 or 1 for a site, defined sites for the population).
    undefined_reason : str or None
        Why ``value`` is NaN; None when it is defined.
    day : hashable or None
        The day (session) it belongs to; ``"pooled"`` for pooled days.
    model : str or None
        Model version for ``estimator == "model"``.
    """

    site_id: Hashable | None
    epsilon: float | None
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n_pairs: int
    n_sites: int
    undefined_reason: str | None = None
    day: Hashable | None = None
    model: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Plain dict for a database row: NaN becomes None, numpy scalars become Python ones."""
        rec = asdict(self)
        for k, v in rec.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            rec[k] = v
        return rec


def to_records(estimates: Iterable[SensitivityEstimate]) -> list[dict[str, Any]]:
    """Rows to store, one per site (or population), epsilon, day and estimator."""
    return [e.to_record() for e in estimates]
