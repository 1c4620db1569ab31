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

import numpy as np
import torch
from torch import Tensor

__all__ = ["project_l2_ball_box", "project_l2_ball_box_bisection"]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def project_l2_ball_box(
    y: Tensor,
    center: Tensor,
    radius: Tensor | float,
    lo: float = 0.0,
    hi: float = 1.0,
    *,
    sparse: bool = True,
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
    sparse : bool
        Solve on the coordinates that can hit the box only (fast; its per-row sums are
        ``index_add`` reductions, whose order on a GPU is not fixed).  ``False`` solves on
        every coordinate with dense row reductions, so a row's result is bit-identical
        whatever else is in the batch (the engine's deterministic mode).

    Returns
    -------
    Tensor of shape (B, ...)
        The exact Euclidean projection (up to float rounding), same memory format as ``y``.

    Notes
    -----
    It runs once or more per synthesis step, so it is written for few full-size passes: rows that are
    feasible after clipping return at once; for the others only coordinates where ``y`` lies
    outside the box can saturate for ``t <= 1`` (a few percent of pixels on natural images),
    so the root of ``g(t) = r`` is found on those alone, the rest entering as one sum.
    """
    b = y.shape[0]
    r = torch.as_tensor(radius, dtype=y.dtype, device=y.device).reshape(-1).expand(b)
    shape = (b,) + (1,) * (y.dim() - 1)
    v = y - center
    if sparse and _numpy_ok(y) and y.is_contiguous() and v.dtype == y.dtype and center.dtype == y.dtype:
        # CPU: rows feasible after clipping (most rows, most steps) are the clip already computed
        # to find the candidates; only the others pay for ``clip(c + t v)``.
        tn, clipped = _t_sparse_numpy(_flat(v), _flat(center), _flat(y), r, lo, hi, 25)
        moved = torch.from_numpy(np.flatnonzero(tn < 1.0))
        if 2 * moved.numel() > b:  # most rows move: one dense pass beats gathering them
            t_all = torch.from_numpy(tn).to(y.dtype).reshape(shape)
            return torch.addcmul(center, t_all, v).clamp_(lo, hi)
        out = torch.from_numpy(clipped).reshape(y.shape)
        if moved.numel():
            tm = torch.from_numpy(tn).to(y.dtype).index_select(0, moved)
            tm = tm.reshape((-1,) + shape[1:])
            xm = torch.addcmul(center.index_select(0, moved), tm, v.index_select(0, moved))
            out.index_copy_(0, moved, xm.clamp_(lo, hi))
        return out
    t = _t_sparse(v, center, y, r, lo, hi) if sparse else _t_dense(v, center, y, r, lo, hi)
    return torch.addcmul(center, t.reshape(shape), v).clamp_(lo, hi)


def _t_dense(v: Tensor, center: Tensor, y: Tensor, r: Tensor, lo: float, hi: float) -> Tensor:
    """Per-row ``t`` from dense row reductions only (bit-identical whatever the batch holds)."""
    b = y.shape[0]
    t = torch.ones(b, dtype=y.dtype, device=y.device)
    # t = 1: plain clip (the centre is in the box, so clipping never moves away from it).
    need = _flat(y.clamp(lo, hi) - center).norm(dim=1) > r
    if not bool(need.any()):
        return t
    idx = None if bool(need.all()) else need.nonzero().squeeze(1)

    def rows(x: Tensor) -> Tensor:
        return _flat(x) if idx is None else _flat(x)[idx]

    vf, cf, rh = rows(v), rows(center), (r if idx is None else r[idx])
    # Infeasible at t = 1 means ||v|| >= n1 > r >= 0, so the ball-scaled t0 is well defined.
    th, done = _solve_t_active_set(vf, cf, rh, rh / vf.norm(dim=1), lo, hi)
    if not bool(done.all()):
        rest = (~done).nonzero().squeeze(1)
        th[rest] = _solve_t_sorted(vf[rest], cf[rest], rh[rest], lo, hi)
    if idx is None:
        return th
    t[idx] = th
    return t


def _t_sparse(
    v: Tensor, center: Tensor, y: Tensor, r: Tensor, lo: float, hi: float, iters: int = 25
) -> Tensor:
    """Per-row ``t`` from the coordinates that can saturate (about 7 full-size passes in all).

    A coordinate saturates at some ``t <= 1`` exactly when ``y = c + v`` lies outside the box
    there; every other coordinate stays free and contributes ``t^2 a_j^2``, so its part of
    ``g(t)^2`` is one sum, and even the feasibility test at ``t = 1`` needs only the
    candidates.  The active-set iteration of :func:`_solve_t_active_set` then touches only
    them.  Rows feasible at ``t = 1`` get exactly 1.
    """
    b, d = y.shape[0], y[0].numel()
    vf, cf, yf = _flat(v), _flat(center), _flat(y)
    if _numpy_ok(yf) and vf.dtype == yf.dtype and cf.dtype == yf.dtype:
        return torch.from_numpy(_t_sparse_numpy(vf, cf, yf, r, lo, hi, iters)[0]).to(y.dtype)
    ycf = yf.clamp(lo, hi)
    idx = _outside(yf, ycf)
    rows = torch.div(idx, d, rounding_mode="floor")
    vk = vf.reshape(-1).index_select(0, idx)
    ck = cf.reshape(-1).index_select(0, idx)
    ak = vk.abs()
    a2k = ak.square()
    v2 = torch.linalg.vector_norm(vf, dim=1).square()
    zero = torch.zeros(b, dtype=v.dtype, device=v.device)
    a2_cand = zero.index_add(0, rows, a2k)
    roomk = (ycf.reshape(-1).index_select(0, idx) - ck).abs()  # clip(y) - c there: the room to its bound
    b2k = roomk.square()
    r2 = r.square()
    # g(1)^2: free coordinates move by v, candidates by their room.
    need = (v2 - a2_cand + zero.index_add(0, rows, b2k)) > r2
    one = torch.ones(b, dtype=v.dtype, device=v.device)
    if not bool(need.any()):
        return one
    bpk = roomk / ak  # y is outside the box there, so v != 0
    a2_free = (v2 - a2_cand).clamp_min(0)  # never saturate for t <= 1
    tiny = torch.finfo(v.dtype).tiny
    t = (r2 / v2.clamp_min(tiny)).sqrt().minimum(one)  # ball-scaled start, <= the root
    done = ~need
    for _ in range(iters):
        sat = (bpk <= t.index_select(0, rows)).to(v.dtype)
        s_b = zero.index_add(0, rows, b2k * sat)
        s_a = a2_free + zero.index_add(0, rows, a2k * (1 - sat))
        ok = s_a > 0
        tn = torch.where(ok, ((r2 - s_b).clamp_min(0) / s_a.clamp_min(tiny)).sqrt(), t)
        done = ~need | (ok & (tn <= t))
        t = torch.maximum(t, tn)
        if bool(done.all()):
            break
    t = torch.where(need, t.clamp(0.0, 1.0), one)
    if not bool(done.all()):
        rest = (~done).nonzero().squeeze(1)
        t[rest] = _solve_t_sorted(vf[rest], cf[rest], r[rest], lo, hi)
    return t


def _numpy_ok(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad


def _t_sparse_numpy(
    vf: Tensor, cf: Tensor, yf: Tensor, r: Tensor, lo: float, hi: float, iters: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_t_sparse` on a CPU in NumPy: the same active-set iteration, a fraction of the cost.

    The per-row work on the candidate coordinates is a few dozen operations on short arrays;
    through torch each costs a dispatch of several microseconds, about twice the full-size
    passes on a 32x32 batch, while NumPy's cost about one.  Row sums are ``bincount``
    reductions in float64 (exact enough that the fixed point is found as in float32, and
    independent of thread count); full-size passes stay three (clip, compare, the norm).
    Returns ``t`` (float64, (B,)) and ``clip(y)`` (B, D), the projection of the rows with
    ``t = 1``.
    """
    b, d = yf.shape
    y_np = yf.detach().contiguous().numpy()
    v_np = vf.detach().contiguous().numpy().reshape(-1)
    c_np = cf.detach().contiguous().numpy().reshape(-1)
    clipped = np.clip(y_np, lo, hi)
    idx = np.flatnonzero(y_np != clipped)
    rows = idx // d
    yk = y_np.reshape(-1)[idx]
    ck = c_np[idx].astype(np.float64)
    ak = np.abs(v_np[idx]).astype(np.float64)
    a2k = ak * ak
    roomk = np.abs(np.clip(yk, lo, hi) - ck)  # clip(y) - c there: the room to its bound
    b2k = roomk * roomk
    v2 = torch.linalg.vector_norm(vf, dim=1).square().double().numpy()
    r2 = r.double().square().numpy()
    a2_cand = np.bincount(rows, a2k, minlength=b)
    # g(1)^2: free coordinates move by v, candidates by their room.
    need = (v2 - a2_cand + np.bincount(rows, b2k, minlength=b)) > r2
    if not need.any():
        return np.ones(b), clipped
    a2_free = np.maximum(v2 - a2_cand, 0.0)  # never saturate for t <= 1
    # Candidates with no room (a clean pixel at the bound, pushed outward: the common case where
    # images saturate) are saturated at every t > 0 and add nothing to either sum: drop them.
    live = np.flatnonzero(roomk > 0)
    if live.size < roomk.size:
        rows, a2k, b2k, roomk, ak = rows[live], a2k[live], b2k[live], roomk[live], ak[live]
    bpk = roomk / ak  # y is outside the box there, so v != 0
    # Ball-scaled start, <= the root; a row that does not move (``v = 0``) needs nothing and keeps
    # 1 (dividing by ``tiny`` there would overflow from radius 2 on).
    t = np.ones(b)
    moving = v2 > 0
    t[moving] = np.minimum(np.sqrt(r2[moving] / v2[moving]), 1.0)
    done = ~need
    for _ in range(iters):
        sat = bpk <= t[rows]
        s_b = np.bincount(rows, np.where(sat, b2k, 0.0), minlength=b)
        s_a = a2_free + np.bincount(rows, np.where(sat, 0.0, a2k), minlength=b)
        ok = s_a > 0
        # Divide only where ``s_a > 0``: ``np.where`` would evaluate ``r^2 / tiny`` on the rest
        # (rows already feasible whose every moving coordinate saturates) and warn of an overflow.
        tn = t.copy()
        tn[ok] = np.sqrt(np.maximum(r2[ok] - s_b[ok], 0.0) / s_a[ok])
        done = ~need | (ok & (tn <= t))
        t = np.maximum(t, tn)
        if done.all():
            break
    out = np.where(need, np.clip(t, 0.0, 1.0), 1.0)
    if not done.all():
        rest = np.flatnonzero(~done)
        rt = torch.from_numpy(rest)
        out[rest] = _solve_t_sorted(vf[rt], cf[rt], r[rt], lo, hi).double().numpy()
    return out, clipped


def _outside(yf: Tensor, ycf: Tensor) -> Tensor:
    """Flat indices of the coordinates where ``y`` lies outside the box (``clip(y) != y``).

    On CPU NumPy does this in well under half the time of ``torch.ne`` + ``torch.nonzero``
    (which cost 3 and 8 arithmetic passes there); the arrays are shared, not copied.
    """
    if yf.device.type == "cpu" and yf.dtype in (torch.float32, torch.float64):
        a, c = yf.detach().contiguous().numpy(), ycf.detach().numpy()
        return torch.from_numpy(np.flatnonzero(a != c))
    return (ycf != yf).reshape(-1).nonzero().squeeze(1)


def _room(v: Tensor, c: Tensor, lo: float, hi: float) -> Tensor:
    """Distance from ``c`` to the bound that ``v`` points at: ``hi - c`` if ``v > 0``, else ``c - lo``.

    Written as ``half - sign(v) * (c - mid)`` rather than ``torch.where``: on CPU a full-size
    ``where`` (or any op reading a bool tensor) costs 5-25x an arithmetic pass, and the
    projection runs every synthesis step.  Coordinates with ``v = 0`` get ``half``; they
    never saturate (``a = 0``), so the value is never used.
    """
    mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
    return half - v.sign() * (c - mid)


def _solve_t_active_set(
    v: Tensor, c: Tensor, r: Tensor, t0: Tensor, lo: float, hi: float, iters: int = 25
) -> tuple[Tensor, Tensor]:
    """Active-set iteration for ``g(t) = r``, exact once the saturated set stops changing.

    With ``S`` the coordinates saturated at the current ``t``, the closed form
    ``t' = sqrt((r^2 - sum_S b^2) / sum_{not S} a^2)`` over-estimates ``g`` beyond ``t``, so starting
    from the ball-scaled ``t0 <= t*`` the iterates increase monotonically to ``t*`` and stop exactly
    when ``S`` is stable (2-3 passes in practice, against a full sort).  Rows that have not
    converged after ``iters`` passes are reported and solved by sorting.  ``S`` is held as a
    0/1 float mask (``sign(relu(t a - b))``), not a bool tensor, for the CPU's sake (see
    :func:`_room`).
    """
    a = v.abs()
    room = _room(v, c, lo, hi).clamp_min(0)
    a2, b2 = a.square(), room.square()
    a2_total = a2.sum(dim=1)
    tiny = torch.finfo(v.dtype).tiny
    t = t0.clone()
    done = torch.zeros_like(t, dtype=torch.bool)
    r2 = r.square()
    for _ in range(iters):
        sat = (a * t.unsqueeze(1) - room).clamp_min_(0).sign_()  # 1 where t a > b: saturated
        s_b = (b2 * sat).sum(dim=1)
        s_a = (a2_total - (a2 * sat).sum(dim=1)).clamp_min(0)
        ok = s_a > 0
        tn = torch.where(ok, ((r2 - s_b).clamp_min(0) / s_a.clamp_min(tiny)).sqrt(), t)
        done = ok & (tn <= t)
        t = torch.maximum(t, tn)
        if bool(done.all()):
            break
    return t.clamp(0.0, 1.0), done


def _solve_t_sorted(v: Tensor, c: Tensor, r: Tensor, lo: float, hi: float) -> Tensor:
    """Exact root of ``sum_j min(t a_j, b_j)^2 = r^2`` per row by sorting breakpoints."""
    a = v.abs()
    room = _room(v, c, lo, hi).clamp_min(0)
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
