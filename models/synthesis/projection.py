"""Exact Euclidean projection onto an L2 ball intersected with a box.

Synthesis must keep every iterate inside ``{x : ||x - c||_2 <= r, lo <= x <= hi}``.  The common
shortcut (scale ``delta`` onto the ball, then clip to the box) is not the projection: clipping
after scaling leaves a point that is feasible but farther than necessary from the gradient step,
which wastes budget exactly where the box binds (bright or dark images, large epsilon).

The KKT conditions of ``min ||x - y||^2  s.t.  ||x - c||^2 <= r^2, lo <= x <= hi`` give, for a
multiplier ``lam >= 0``, ``x(lam) = clip(c + (y - c) / (1 + lam), lo, hi)``.  Writing
``t = 1 / (1 + lam)`` in ``(0, 1]`` and ``v = y - c`` (with ``c`` inside the box), each coordinate
of ``x(t) - c`` has magnitude ``min(t |v_j|, b_j)`` where ``b_j`` is the room to the bound that
``v_j`` points at.  Hence ``g(t)^2 = ||x(t) - c||^2`` is piecewise quadratic and increasing in
``t``, and the root of ``g(t) = r`` is found exactly by sorting the breakpoints ``b_j / |v_j|``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_l2_ball_box", "project_l2_ball_box_bisection"]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def project_l2_ball_box(
    y: Tensor, center: Tensor, radius: Tensor | float, lo: float = 0.0, hi: float = 1.0
) -> Tensor:
    """Project each row of ``y`` onto ``{x : ||x - center||_2 <= radius} ∩ [lo, hi]^d``.

    Parameters
    ----------
    y : Tensor of shape (B, ...)
        Points to project (any float dtype; computed in that dtype).
    center : Tensor of shape (B, ...)
        Ball centres; must lie inside the box, otherwise the intersection may be empty.
    radius : Tensor of shape (B,) or float
        Ball radii, ``>= 0``.
    lo, hi : float
        Box bounds.

    Returns
    -------
    Tensor of shape (B, ...)
        The exact Euclidean projection (up to float rounding), same memory format as ``y``.

    Notes
    -----
    Rows that are already feasible after clipping, and rows where the box does not bind at the
    ball-scaled point, take closed-form fast paths; only the remaining rows pay for a sort.
    """
    b = y.shape[0]
    r = torch.as_tensor(radius, dtype=y.dtype, device=y.device).reshape(-1).expand(b)
    v = y - center
    # t = 1: plain clip; feasible if it already lies in the ball.
    x1 = (center + v).clamp(lo, hi)
    n1 = _flat(x1 - center).norm(dim=1)
    t = torch.ones(b, dtype=y.dtype, device=y.device)
    need = n1 > r
    if not bool(need.any()):
        return x1
    vn = _flat(v).norm(dim=1)
    # Ball-scaled point: exact when the box does not bind there.
    t0 = torch.where(vn > 0, r / vn.clamp_min(torch.finfo(y.dtype).tiny), torch.zeros_like(vn))
    shape = (b,) + (1,) * (y.dim() - 1)
    x0 = center + t0.reshape(shape) * v
    inside = _flat((x0 < lo) | (x0 > hi)).any(dim=1).logical_not()
    t = torch.where(need & inside, t0, t)
    hard = need & ~inside
    if bool(hard.any()):
        idx = hard.nonzero().squeeze(1)
        vf, cf, rh = _flat(v[idx]), _flat(center[idx]), r[idx]
        th, done = _solve_t_active_set(vf, cf, rh, t0[idx], lo, hi)
        if not bool(done.all()):
            rest = (~done).nonzero().squeeze(1)
            th[rest] = _solve_t_sorted(vf[rest], cf[rest], rh[rest], lo, hi)
        t[idx] = th
    t = t.reshape(shape)
    return (center + t * v).clamp(lo, hi)


def _solve_t_active_set(
    v: Tensor, c: Tensor, r: Tensor, t0: Tensor, lo: float, hi: float, iters: int = 25
) -> tuple[Tensor, Tensor]:
    """Active-set iteration for ``g(t) = r``, exact once the saturated set stops changing.

    With ``S`` the coordinates saturated at the current ``t``, the closed form
    ``t' = sqrt((r^2 - sum_S b^2) / sum_{not S} a^2)`` over-estimates ``g`` beyond ``t``, so starting
    from the ball-scaled ``t0 <= t*`` the iterates increase monotonically to ``t*`` and stop exactly
    when ``S`` is stable (a few passes in practice, against a full sort).  Rows that have not
    converged after ``iters`` passes are reported and solved by sorting.
    """
    a = v.abs()
    room = torch.where(v > 0, hi - c, c - lo).clamp_min(0)
    bp = torch.where(a > 0, room / a.clamp_min(torch.finfo(v.dtype).tiny), torch.full_like(a, float("inf")))
    t = t0.clone()
    done = torch.zeros_like(t, dtype=torch.bool)
    r2 = r.square()
    for _ in range(iters):
        sat = bp <= t.unsqueeze(1)
        s_b = torch.where(sat, room.square(), torch.zeros_like(room)).sum(dim=1)
        s_a = torch.where(sat, torch.zeros_like(a), a.square()).sum(dim=1)
        ok = s_a > 0
        tn = torch.where(ok, ((r2 - s_b).clamp_min(0) / s_a.clamp_min(torch.finfo(v.dtype).tiny)).sqrt(), t)
        done = ~ok | (tn <= t)
        done = done & ok
        t = torch.maximum(t, tn)
        if bool(done.all()):
            break
    return t.clamp(0.0, 1.0), done


def _solve_t_sorted(v: Tensor, c: Tensor, r: Tensor, lo: float, hi: float) -> Tensor:
    """Exact root of ``sum_j min(t a_j, b_j)^2 = r^2`` per row by sorting breakpoints."""
    a = v.abs()
    room = torch.where(v > 0, hi - c, c - lo).clamp_min(0)
    big = torch.finfo(v.dtype).max
    bp = torch.where(a > 0, room / a.clamp_min(torch.finfo(v.dtype).tiny), torch.full_like(a, big))
    bp, order = bp.sort(dim=1)
    a2 = a.gather(1, order).square()
    b2 = room.gather(1, order).square()
    b2 = torch.where(a2 > 0, b2, torch.zeros_like(b2))
    # Before breakpoint k the first k coordinates are saturated.
    sat = torch.cumsum(b2, dim=1) - b2  # sum_{j<k} b_j^2
    free = a2.sum(dim=1, keepdim=True) - (torch.cumsum(a2, dim=1) - a2)  # sum_{j>=k} a_j^2
    g2_at_bp = sat + bp.square() * free
    r2 = r.square().unsqueeze(1)
    # First breakpoint where g^2 reaches r^2; the root lies in the segment just before it.
    reach = g2_at_bp >= r2
    k = torch.where(reach.any(dim=1), reach.float().argmax(dim=1), torch.full_like(r, v.shape[1] - 1).long())
    sat_k = sat.gather(1, k[:, None]).squeeze(1)
    free_k = free.gather(1, k[:, None]).squeeze(1).clamp_min(torch.finfo(v.dtype).tiny)
    t = ((r.square() - sat_k).clamp_min(0) / free_k).sqrt()
    return t.clamp(0.0, 1.0)


def project_l2_ball_box_bisection(
    y: Tensor, center: Tensor, radius: Tensor | float, lo: float = 0.0, hi: float = 1.0, iters: int = 200
) -> Tensor:
    """Slow reference projection by bisection on ``t = 1 / (1 + lam)``, in float64.

    Kept for tests and for auditing the fast path; same contract as :func:`project_l2_ball_box`.
    """
    y64, c64 = y.double(), center.double()
    b = y.shape[0]
    r = torch.as_tensor(radius, dtype=torch.float64, device=y.device).reshape(-1).expand(b)
    shape = (b,) + (1,) * (y.dim() - 1)
    v = y64 - c64

    def g(t: Tensor) -> Tensor:
        return _flat((c64 + t.reshape(shape) * v).clamp(lo, hi) - c64).norm(dim=1)

    lo_t = torch.zeros(b, dtype=torch.float64, device=y.device)
    hi_t = torch.ones(b, dtype=torch.float64, device=y.device)
    feasible = g(hi_t) <= r
    for _ in range(iters):
        mid = 0.5 * (lo_t + hi_t)
        over = g(mid) > r
        hi_t = torch.where(over, mid, hi_t)
        lo_t = torch.where(over, lo_t, mid)
    t = torch.where(feasible, torch.ones_like(lo_t), lo_t)
    return (c64 + t.reshape(shape) * v).clamp(lo, hi).to(y.dtype)
