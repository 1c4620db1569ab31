"""Exact maximisation of a linear function over an L2 ball intersected with the pixel box.

The virtual brain's sites are linear-nonlinear in pixels, ``r(x) = baseline + gain * g(a . x + b)``
with ``g`` monotone, so the largest change of a site's rate inside the perturbation set

    {delta : ||delta||_2 <= eps,  0 <= x + delta <= 1}

is reached where ``a . delta`` is extreme. That is a small convex problem with a closed-form
solution up to one scalar: from the KKT conditions the maximiser is

    delta(t) = clip(t * a, -x, 1 - x),   t >= 0,

with ``t`` the smallest value at which ``||delta(t)||_2 = eps``, or ``t = inf`` when the whole
box corner fits inside the ball. Coordinate ``j`` saturates at ``t_j = cap_j / |a_j|`` (``cap_j``
is the room left in the box in the direction of ``a_j``), so ``||delta(t)||^2`` is piecewise
quadratic in ``t`` with breakpoints ``t_j``. Sorting the breakpoints once gives the exact ``t``
for every epsilon at once, with no iterative tolerance: this is the ground truth against which
the synthesis engine's projected gradient ascent is judged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["max_linear_ball_box", "argmax_linear_ball_box"]


def _prepare(a: np.ndarray, x: np.ndarray):
    a = np.asarray(a, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or x.ndim != 2 or x.shape[1] != a.shape[0]:
        raise ValueError(f"need a of shape (D,) and x of shape (n, D); got {a.shape}, {x.shape}")
    absa = np.abs(a)
    # room left in the box along sign(a_j); zero where a_j == 0 (those coordinates never move)
    cap = np.where(a > 0, 1.0 - x, np.where(a < 0, x, 0.0))
    cap = np.clip(cap, 0.0, None)
    return a, x, absa, cap


def _candidates(tj: np.ndarray, absa: np.ndarray, cap: np.ndarray, eps_max: float, prune: bool):
    """Indices (n, m) of the coordinates that may saturate at radius ``eps_max``, smallest ``t_j`` first.

    Coordinates whose breakpoint ``t_j`` exceeds a radius-``eps_max`` upper bound ``T`` on the optimal
    ``t`` stay free for every radius asked, so only the others need sorting. ``T`` starts at the
    box-free value ``eps / ||a||`` (a lower bound) and doubles until ``||delta(T)|| >= eps``.
    """
    n, d = tj.shape
    norm_a = float(np.sqrt(np.sum(absa**2)))
    keep = d
    corner2 = np.sum(np.where(absa > 0, cap, 0.0) ** 2, axis=1)  # ||delta(inf)||^2
    if prune and norm_a > 0 and eps_max > 0 and np.all(corner2 > eps_max**2):
        t_hi = np.full((n, 1), 1.5 * eps_max / norm_a)
        for _ in range(40):
            reached = np.sum(np.minimum(t_hi * absa, cap) ** 2, axis=1) >= eps_max**2
            if reached.all():
                keep = int(np.max(np.sum(tj <= t_hi, axis=1)))
                break
            t_hi = np.where(reached[:, None], t_hi, 2.0 * t_hi)
    if keep >= d:
        return np.argsort(tj, axis=1, kind="stable")
    if keep == 0:
        return np.zeros((n, 0), dtype=np.intp)
    part = np.argpartition(tj, keep - 1, axis=1)[:, :keep]
    sub = np.take_along_axis(tj, part, axis=1)
    return np.take_along_axis(part, np.argsort(sub, axis=1, kind="stable"), axis=1)


def _solve_t(absa: np.ndarray, cap: np.ndarray, eps: np.ndarray, prune: bool = True):
    """Return ``t`` of shape (n_eps, n) and the objective ``|a| . min(t|a|, cap)`` of shape (n_eps, n)."""
    n, _ = cap.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        tj = np.where(absa > 0, cap / absa, np.inf)
    order = _candidates(tj, absa, cap, float(np.max(eps, initial=0.0)), prune)
    ts = np.take_along_axis(tj, order, axis=1)
    a_s = absa[order]
    cap_s = np.take_along_axis(cap, order, axis=1)
    zeros = np.zeros((n, 1))
    # a^2 of the coordinates never sorted: free at every radius asked
    rest_a2 = np.clip(np.sum(absa**2) - np.sum(a_s**2, axis=1, keepdims=True), 0.0, None)
    if order.shape[1] == absa.shape[0]:
        rest_a2 = zeros
    # Prepend the point t = 0 (nothing saturated), then cumulate over saturated coordinates.
    sat_c2 = np.concatenate([zeros, np.cumsum(cap_s**2, axis=1)], axis=1)  # sum cap^2 saturated
    sat_ac = np.concatenate([zeros, np.cumsum(a_s * cap_s, axis=1)], axis=1)  # sum |a| cap saturated
    # a^2 of the coordinates still free, by a reverse cumsum so that "all saturated" is exactly 0
    free_a2 = np.concatenate([np.cumsum((a_s**2)[:, ::-1], axis=1)[:, ::-1], zeros], axis=1) + rest_a2
    t_break = np.concatenate([zeros, ts], axis=1)
    with np.errstate(invalid="ignore"):
        norm2 = np.where(np.isfinite(t_break), t_break**2 * free_a2 + sat_c2, np.inf)  # ||delta(t_k)||^2
    norm2 = np.maximum.accumulate(norm2, axis=1)  # exact arithmetic is monotone; keep it so
    eps2 = eps**2
    # k: last breakpoint whose norm is still <= eps^2 (index 0 is t = 0, always feasible)
    k = np.stack([np.sum(norm2 <= e2, axis=1) - 1 for e2 in eps2])  # (n_eps, n)
    rows = np.arange(n)[None, :]
    c2 = sat_c2[rows, k]
    ac = sat_ac[rows, k]
    fa2 = free_a2[rows, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(fa2 > 0, np.sqrt(np.clip(eps2[:, None] - c2, 0.0, None) / fa2), np.inf)
    value = ac + np.where(fa2 > 0, np.where(np.isfinite(t), t, 0.0) * fa2, 0.0)
    return t, value


def max_linear_ball_box(a: np.ndarray, x: np.ndarray, eps: float | np.ndarray) -> np.ndarray:
    """Exact ``max a . delta`` over ``||delta||_2 <= eps`` and ``0 <= x + delta <= 1``.

    Parameters
    ----------
    a : ndarray of shape (D,)
        Direction (a site's pixel weights). Use ``-a`` for the minimum.
    x : ndarray of shape (n, D)
        Points in the box [0, 1]^D (flattened clean images).
    eps : float or ndarray of shape (n_eps,)
        L2 radii, >= 0.

    Returns
    -------
    ndarray of shape (n,) for scalar eps, else (n_eps, n)
        The maximum of ``a . delta``, always >= 0 (``delta = 0`` is feasible).
    """
    eps_arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if eps_arr.ndim != 1 or np.any(eps_arr < 0):
        raise ValueError("eps must be a non-negative scalar or 1-D array")
    _, _, absa, cap = _prepare(a, x)
    _, value = _solve_t(absa, cap, eps_arr)
    return value[0] if np.ndim(eps) == 0 else value


def argmax_linear_ball_box(a: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """The maximiser ``delta`` of :func:`max_linear_ball_box` for one radius.

    Returns
    -------
    ndarray of shape (n, D)
        ``clip(t * a, -x, 1 - x)`` with the exact ``t`` per row.
    """
    a, x, absa, cap = _prepare(a, x)
    t, _ = _solve_t(absa, cap, np.array([float(eps)]))
    t0 = t[0][:, None]
    # t = inf means the whole box corner fits in the ball: every moving coordinate saturates
    step = np.where(np.isinf(t0), cap, np.minimum(np.where(np.isinf(t0), 0.0, t0) * absa[None, :], cap))
    step = np.where(absa[None, :] > 0, step, 0.0)
    return np.sign(a)[None, :] * step
