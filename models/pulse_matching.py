"""Matching rig events to sync pulses: the geometry under :mod:`models.clock_alignment`.

Why its own module: these are the low-level steps of the alignment (nearest-pulse lookup,
one-to-one matching within a tolerance, a conditioned line fit, coarse offset proposals and the
progressive refinement from an anchor), pure functions of sorted arrays with no notion of
frames, reports or errors. :mod:`models.clock_alignment` composes them and explains the method.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_line", "match_pulses", "nearest_pulse", "propose_offsets", "refine_fit"]

N_PROPOSALS = 6  # distinct coarse offsets refined in full
PROPOSAL_EVENTS = 8  # first rig events paired with every pulse to propose offsets


def nearest_pulse(sorted_p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest pulse to each query, and the signed distance pulse - query."""
    idx = np.searchsorted(sorted_p, q)
    lo = np.clip(idx - 1, 0, len(sorted_p) - 1)
    hi = np.clip(idx, 0, len(sorted_p) - 1)
    dlo = sorted_p[lo] - q
    dhi = sorted_p[hi] - q
    use_hi = np.abs(dhi) < np.abs(dlo)
    return np.where(use_hi, hi, lo), np.where(use_hi, dhi, dlo)


def match_pulses(sorted_p: np.ndarray, q: np.ndarray, tol: float) -> np.ndarray:
    """One-to-one nearest matching within ``tol``: pulse index per query, -1 for none."""
    j, d = nearest_pulse(sorted_p, q)
    ok = np.abs(d) <= tol
    out = np.full(len(q), -1, dtype=np.int64)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        return out
    # Two events claiming one pulse: the closer keeps it.
    order = cand[np.argsort(np.abs(d[cand]), kind="stable")]
    _, first = np.unique(j[order], return_index=True)
    keep = order[first]
    out[keep] = j[keep]
    return out


def fit_line(r: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Least-squares line p = a + b r (centred for conditioning); slope 1 when r spans nothing."""
    rm, pm = float(r.mean()), float(p.mean())
    dr = r - rm
    ss = float(dr @ dr)
    b = float(dr @ (p - pm)) / ss if ss > 0 and len(r) >= 3 else 1.0
    return pm - b * rm, b


def propose_offsets(r: np.ndarray, p: np.ndarray, anchor: int, tol: float) -> list[tuple[int, float]]:
    """Distinct coarse offsets with their anchor scores, best first."""
    first = r[: min(PROPOSAL_EVENTS, anchor)]
    cands = (p[None, :] - first[:, None]).ravel()
    window = r[:anchor]
    scores = np.empty(len(cands), dtype=np.int64)
    step = max(1, 2_000_000 // max(anchor, 1))
    for s in range(0, len(cands), step):
        block = cands[s : s + step]
        q = (window[None, :] + block[:, None]).ravel()
        _, d = nearest_pulse(p, q)
        scores[s : s + step] = (np.abs(d) <= tol).reshape(len(block), anchor).sum(axis=1)
    order = np.argsort(-scores, kind="stable")
    chosen: list[tuple[int, float]] = []
    for k in order:
        if scores[k] < max(3, anchor // 2) or len(chosen) >= N_PROPOSALS:
            break
        if all(abs(cands[k] - c) > 2 * tol for _, c in chosen):
            chosen.append((int(scores[k]), float(cands[k])))
    return chosen


def refine_fit(
    r: np.ndarray, p: np.ndarray, offset: float, tol: float, coarse_tol: float, anchor_s: float
) -> tuple[float, float, np.ndarray]:
    """Grow the matched window from the anchor, refitting; then a robust final refit."""
    a, b = offset, 1.0
    span = anchor_s
    t0 = r[0]
    current_tol = coarse_tol
    while True:
        sel = r <= t0 + span
        m = match_pulses(p, a + b * r[sel], current_tol)
        ok = m >= 0
        if ok.sum() >= 2:
            rr, pp = r[sel][ok], p[m[ok]]
            a, b = fit_line(rr, pp) if rr[-1] - rr[0] > 0.5 * anchor_s else (float(np.median(pp - rr)), 1.0)
        current_tol = tol
        if sel.all():
            break
        span *= 2
    m = match_pulses(p, a + b * r, tol)
    for _ in range(3):
        ok = m >= 0
        if ok.sum() < 3:
            break
        res = p[m[ok]] - (a + b * r[ok])
        mad = float(np.median(np.abs(res - np.median(res)))) * 1.4826
        inlier = np.abs(res - np.median(res)) <= max(5 * mad, 1e-4)
        a, b = fit_line(r[ok][inlier], p[m[ok]][inlier])
        m = match_pulses(p, a + b * r, tol)
    return a, b, m
