"""Compare IT's sensitivity curve over epsilon with models' curves.

Sensitivities span decades (the paper: a standard ResNet-50 is about ten times
more sensitive than IT), so curves are compared in log space: a model twice as
sensitive as IT is as far from it as one half as sensitive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CurveComparison", "compare_curves"]


@dataclass(frozen=True)
class CurveComparison:
    """How each model's sensitivity curve relates to IT's.

    Attributes
    ----------
    distances : dict of str to float
        Mean over epsilons of ``log(it / model) ** 2``; NaN if no usable epsilon.
    ratios : dict of str to float
        Geometric mean over epsilons of ``it / model`` (below 1: IT is less sensitive).
    n_eps : dict of str to int
        Epsilons used for each model: those where both curves are finite and positive.
    closest : str or None
        Model with the smallest distance; None if no model has a usable epsilon.
    standard : str or None
        The model named as the standard network, if any.
    ratio_to_standard : float
        ``ratios[standard]``; NaN without a standard model.
    """

    distances: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    n_eps: dict[str, int] = field(default_factory=dict)
    closest: str | None = None
    standard: str | None = None
    ratio_to_standard: float = math.nan


def compare_curves(
    it_curve: ArrayLike, model_curves: Mapping[str, ArrayLike], *, standard: str | None = None
) -> CurveComparison:
    """Which model's sensitivity-vs-epsilon curve is closest to IT's, and by what factor they differ.

    Parameters
    ----------
    it_curve : array-like of shape (n_eps,)
        IT population sensitivity at each epsilon (e.g. the sign-corrected figure).
    model_curves : mapping of str to array-like of shape (n_eps,)
        Each model's sensitivity at the same epsilons.
    standard : str, optional
        Name of the standard (non-robust) network in ``model_curves``, whose
        ratio is reported as ``ratio_to_standard``.

    Notes
    -----
    Epsilons where either value is not finite or not positive are skipped for
    that model (a sign-corrected IT figure can be <= 0 at small epsilon, where
    its log is meaningless).
    """
    it = np.asarray(it_curve, dtype=float)
    if it.ndim != 1:
        raise ValueError(f"it_curve must be 1-D, got shape {it.shape}")
    if standard is not None and standard not in model_curves:
        raise ValueError(f"standard model {standard!r} is not among {sorted(model_curves)}")
    out = CurveComparison(standard=standard)
    for name, curve in model_curves.items():
        m = np.asarray(curve, dtype=float)
        if m.shape != it.shape:
            raise ValueError(f"curve of {name!r} has shape {m.shape}, IT has {it.shape}")
        ok = np.isfinite(it) & np.isfinite(m) & (it > 0) & (m > 0)
        k = int(ok.sum())
        out.n_eps[name] = k
        if k == 0:
            out.distances[name] = out.ratios[name] = math.nan
            continue
        log_ratio = np.log(it[ok]) - np.log(m[ok])
        out.distances[name] = float(np.mean(log_ratio**2))
        out.ratios[name] = float(np.exp(np.mean(log_ratio)))
    usable = {k: v for k, v in out.distances.items() if math.isfinite(v)}
    closest = min(usable, key=usable.__getitem__) if usable else None
    ratio = out.ratios.get(standard, math.nan) if standard is not None else math.nan
    return CurveComparison(out.distances, out.ratios, out.n_eps, closest, standard, ratio)
