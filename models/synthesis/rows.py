"""The engine's row state: one row per (case, restart), all rows of a pool in one batch.

Every field is a tensor whose first dimension is the row; rows of one case are contiguous and
in restart order.  Keeping them as named fields (not a dict of short keys) lets the step
arithmetic in :mod:`models.synthesis.engine` read like the algorithm it implements.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["RowState", "Finished", "new_rows"]


@dataclass
class RowState:
    """Per-row tensors of the pool (``B`` rows; images are (B, C, H, W) or channels-last (B, H, W, C)).

    Attributes
    ----------
    case, restart : Tensor (B,), int64
        The case a row belongs to, and the row's restart index within its case (the lowest
        restart wins ties when the best candidate is picked).
    x : Tensor
        The current iterate, where the next gradient is evaluated.
    x_prev : Tensor
        The iterate before ``x`` (APGD momentum extrapolates from it).
    grad : Tensor
        The gradient of the objective at ``x`` (zeros until the first evaluation).
    x_best, grad_best : Tensor
        The best point seen so far and the gradient there (the 8-bit repair is guided by it).
    f_best, f_prev : Tensor (B,), float32
        Objective at ``x_best``, and at the previous iterate (to count increases).
    step : Tensor (B,), float32
        Current step length (L2), annealed and cut at APGD checkpoints.
    radius : Tensor (B,), float32
        Radius of the ball the row lives in now (``first_ball_factor * eps`` in the big-ball
        phase, then ``eps``).
    eps : Tensor (B,), float32
        The case's epsilon: the ball every shipped image must lie in.
    center : Tensor
        The clean image (the ball's centre), repeated per row.
    n_increase : Tensor (B,), float32
        Steps since the last APGD checkpoint on which the objective increased.
    f_checkpoint : Tensor (B,), float32
        ``f_best`` at the last APGD checkpoint.
    reduced_last : Tensor (B,), bool
        Whether the step was cut at the last checkpoint (APGD's second condition).
    no_improve : Tensor (B,), float32
        Consecutive steps without a new best (annealing fires at ``patience``).
    fresh : Tensor (B,), bool
        The row has just (re)started: its next step takes no momentum.
    """

    case: Tensor
    restart: Tensor
    x: Tensor
    x_prev: Tensor
    grad: Tensor
    x_best: Tensor
    grad_best: Tensor
    f_best: Tensor
    f_prev: Tensor
    step: Tensor
    radius: Tensor
    eps: Tensor
    center: Tensor
    n_increase: Tensor
    f_checkpoint: Tensor
    reduced_last: Tensor
    no_improve: Tensor
    fresh: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @staticmethod
    def cat(parts: list[RowState]) -> RowState:
        """Rows of ``parts`` one after another (new tensors: no field shares memory with a part)."""
        return RowState(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(RowState)})

    def select(self, idx: Tensor) -> RowState:
        """The rows at ``idx`` (new tensors)."""
        return RowState(**{f.name: getattr(self, f.name).index_select(0, idx) for f in fields(RowState)})


def new_rows(cid: int, x: Tensor, center: Tensor, eps: float, radius: float, step: float) -> RowState:
    """Fresh rows of case ``cid`` starting at ``x`` (R rows), in a ball of ``radius`` around ``center``."""
    r0, dev = x.shape[0], x.device

    def full(v: float | bool, dt: torch.dtype = torch.float32) -> Tensor:
        return torch.full((r0,), v, device=dev, dtype=dt)

    return RowState(
        case=torch.full((r0,), cid, device=dev, dtype=torch.long),
        restart=torch.arange(r0, device=dev),
        x=x,
        x_prev=x.clone(),
        grad=torch.zeros_like(x),
        x_best=x.clone(),
        grad_best=torch.zeros_like(x),
        f_best=full(-float("inf")),
        f_prev=full(-float("inf")),
        step=full(step),
        radius=full(radius),
        eps=full(eps),
        center=center.expand_as(x).clone(),
        n_increase=full(0),
        f_checkpoint=full(-float("inf")),
        reduced_last=full(True, torch.bool),
        no_improve=full(0),
        fresh=full(True, torch.bool),
    )


@dataclass
class Finished:
    """One finished case's candidates: every surviving restart's best point, in the model's layout.

    Attributes
    ----------
    case : int
        The case id (its index in the call's case list).
    x_best : Tensor (R, C, H, W)
        Best float point of each surviving restart.
    center : Tensor (R, C, H, W)
        The clean image, per restart.
    eps : Tensor (R,)
        The case's epsilon, per restart.
    restart : Tensor (R,), int64
        Restart indices of the rows.
    grad_best : Tensor (R, C, H, W)
        Gradient at each best point (guides the 8-bit repair).
    """

    case: int
    x_best: Tensor
    center: Tensor
    eps: Tensor
    restart: Tensor
    grad_best: Tensor
