"""Adversarial sensitivity of IT sites and of models (DESIGN.md section 1).

Pure numpy: arrays of responses in, tidy :class:`SensitivityEstimate` records out.
The worker fills :class:`CleanResponses`, :class:`PairedResponses` (one or more
per epsilon) and :class:`ModelPredictions`, calls :func:`analyze_day`, and stores
``result.to_records()``.
"""

from .analysis import POOLED, DayAnalysis, DayOverDay, analyze_day, analyze_days
from .curves import CurveComparison, compare_curves
from .data import CleanResponses, DayInputs, ModelPredictions, PairedResponses, pool_days, trial_means
from .estimators import (
    ESTIMATORS,
    SensitivityEstimate,
    model_sensitivity,
    pair_sensitivity,
    random_pair_baseline,
    site_sigma,
    to_records,
)

__all__ = [
    "ESTIMATORS",
    "POOLED",
    "CleanResponses",
    "CurveComparison",
    "DayAnalysis",
    "DayInputs",
    "DayOverDay",
    "ModelPredictions",
    "PairedResponses",
    "SensitivityEstimate",
    "analyze_day",
    "analyze_days",
    "compare_curves",
    "model_sensitivity",
    "pair_sensitivity",
    "pool_days",
    "random_pair_baseline",
    "site_sigma",
    "to_records",
    "trial_means",
]
