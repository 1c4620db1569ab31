"""Adaptive allocation of a day's trials: more repeats where the estimates are least certain.

Why: a day has a fixed length, so its presentations are a budget. Spending it evenly gives
every site and epsilon the same number of repeats, although some estimates are already tight
and others are still too wide to rank the sites. The sum of the estimates' variances,
``sum_j s_j^2 / n_j`` with ``sum_j n_j`` fixed, is smallest for ``n_j`` proportional to
``s_j`` (a Lagrange multiplier argument), and a confidence interval's width is proportional to
``s_j / sqrt(n_j)``: so, measured after a day of equal repeats, the repeats of each twin go in
proportion to the width of the confidence interval of its site's estimate at its epsilon.

The budget is kept exactly (the total of repeats does not change, so the day does not get
longer), every twin keeps at least ``min_repeats`` (every pair stays measurable) and at most
``max_repeats`` (one wide site cannot take the whole day).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RepeatPlan", "allocate_repeats", "plan_twin_repeats"]


def allocate_repeats(weights: np.ndarray, *, base: int, min_repeats: int, max_repeats: int) -> np.ndarray:
    """Integer repeats in proportion to ``weights``, summing to ``base * len(weights)``.

    Parameters
    ----------
    weights : ndarray of shape (n,)
        Non-negative; NaN (no information) counts as the median of the finite weights.
    base : int
        The even allocation, repeats per item.
    min_repeats, max_repeats : int
        Bounds per item, ``1 <= min_repeats <= base <= max_repeats``.

    Returns
    -------
    ndarray of int, shape (n,)
        Proportional allocation within the bounds (water-filling), rounded by largest
        remainder so that the total is exactly ``base * n``.
    """
    if not 1 <= min_repeats <= base <= max_repeats:
        raise ValueError(
            f"need 1 <= min_repeats ({min_repeats}) <= base ({base}) <= max_repeats ({max_repeats})"
        )
    w = np.asarray(weights, dtype=float).copy()
    n = w.size
    if n == 0:
        return np.zeros(0, dtype=int)
    finite = np.isfinite(w) & (w >= 0)
    fill = float(np.median(w[finite])) if finite.any() else 1.0
    w[~finite] = fill
    if not np.any(w > 0):
        return np.full(n, base, dtype=int)
    total = float(base * n)
    # Water-filling: scale the free items so that, with the clipped ones fixed, the sum is met.
    lo, hi = float(min_repeats), float(max_repeats)
    fixed = np.full(n, np.nan)
    for _ in range(n + 1):
        free = np.isnan(fixed)
        budget = total - np.nansum(fixed)
        wf = w[free].sum()
        share = np.where(free, budget * w / wf if wf > 0 else budget / max(free.sum(), 1), fixed)
        over, under = free & (share > hi), free & (share < lo)
        if not over.any() and not under.any():
            break
        fixed[over], fixed[under] = hi, lo
    share = np.clip(share, lo, hi)
    out = np.floor(share).astype(int)
    left = int(round(total)) - int(out.sum())
    order = np.argsort(-(share - out), kind="stable")
    for j in order:
        if left <= 0:
            break
        if out[j] < max_repeats:
            out[j] += 1
            left -= 1
    return out


@dataclass(frozen=True)
class RepeatPlan:
    """Repeats per twin and why.

    Attributes
    ----------
    repeats : dict of twin id to int
        Repeats of every twin (clean and reference images keep the even allocation).
    width : dict of (site, epsilon) to float
        The confidence-interval width that weighted each (site, epsilon); NaN where none was
        known yet (those twins get the median weight).
    reason : str
        One line for the night's record.
    """

    repeats: dict[str, int]
    width: dict[tuple[Hashable, float], float]
    reason: str


def plan_twin_repeats(
    twins: Sequence[tuple[str, Hashable, float]],
    widths: Mapping[tuple[Hashable, float], float],
    *,
    base: int,
    max_factor: float = 2.0,
) -> RepeatPlan:
    """Repeats for each twin ``(id, site, epsilon)`` from its site's CI width at its epsilon.

    With no width known at all, every twin keeps ``base`` repeats (the even schedule).
    Bounds: at least ``ceil(base / max_factor)`` (and 1), at most ``floor(base * max_factor)``.
    """
    keys = [(site, round(float(eps), 9)) for _, site, eps in twins]
    known = {(s, round(float(e), 9)): float(v) for (s, e), v in widths.items() if v is not None}
    w = np.array([known.get(k, np.nan) for k in keys], dtype=float)
    even = {tid: base for tid, _, _ in twins}
    if not twins or not np.isfinite(w).any() or base < 2:
        why = "even repeats: no confidence intervals yet" if twins and base >= 2 else "even repeats"
        return RepeatPlan(even, {k: float("nan") for k in keys}, why)
    lo = max(1, int(np.ceil(base / max_factor)))
    hi = max(base, int(np.floor(base * max_factor)))
    reps = allocate_repeats(w, base=base, min_repeats=lo, max_repeats=hi)
    by_key = dict(zip(keys, w, strict=True))
    widest = max(by_key, key=lambda k: by_key[k] if np.isfinite(by_key[k]) else -1.0)
    narrowest = min(by_key, key=lambda k: by_key[k] if np.isfinite(by_key[k]) else np.inf)
    reason = (
        f"repeats by CI width ({lo}-{hi} per twin, {base} on average): widest site {widest[0]} "
        f"at eps {widest[1]:g} (width {by_key[widest]:.3g}) gets {reps[keys.index(widest)]}, "
        f"narrowest {narrowest[0]} at eps {narrowest[1]:g} (width {by_key[narrowest]:.3g}) "
        f"gets {reps[keys.index(narrowest)]}"
    )
    return RepeatPlan({tid: int(r) for (tid, _, _), r in zip(twins, reps, strict=True)}, by_key, reason)
