"""Attack steps: the geometry of one threat model, nothing of the model or the loss.

Following MadryLab/robustness ``attack_steps.py``: a step knows how to draw a random start, how to
move along a gradient and how to project back; the engine composes them with a step-size rule.
Every operation is per row, so rows belonging to different cases (different centres, radii) can
share one batch, and a row's result never depends on its neighbours (needed for deterministic,
chunk-independent synthesis).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .projection import project_l2_ball_box

__all__ = ["AttackStep", "L2BallBoxStep"]


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class AttackStep(Protocol):
    """Protocol of a step: random start, ascent step and projection for rows of a batch."""

    def random_perturb(self, center: Tensor, radius: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random feasible point around ``center`` (shape (B, ...)) within ``radius`` (B,)."""
        ...

    def step(self, x: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        """Unconstrained ascent step of length ``step_size`` (B,) along ``grad``."""
        ...

    def project(self, x: Tensor, center: Tensor, radius: Tensor) -> Tensor:
        """Project ``x`` back onto the feasible set of each row."""
        ...


class L2BallBoxStep:
    """L2 ball around the clean image intersected with the pixel box ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : float
        Pixel bounds (images live in [0, 1]).
    deterministic : bool
        Project with row-independent dense reductions (see :func:`project_l2_ball_box`).
    init_fraction : float
        Random starts are drawn on the sphere of radius ``init_fraction * radius`` (then projected
        to the box): in high dimension a uniform draw in the ball lands on the sphere anyway, and a
        start at the boundary is where L2 optima of smooth models live.
    """

    def __init__(
        self, lo: float = 0.0, hi: float = 1.0, init_fraction: float = 1.0, deterministic: bool = False
    ) -> None:
        self.lo = lo
        self.hi = hi
        self.init_fraction = init_fraction
        self.deterministic = deterministic

    def random_perturb(self, center: Tensor, radius: Tensor, generator: torch.Generator | None) -> Tensor:
        """Gaussian direction scaled to ``init_fraction * radius``, projected onto ball ∩ box."""
        u = torch.randn(center.shape, generator=generator, device=center.device, dtype=center.dtype)
        n = u.reshape(u.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        x = center + u * _bcast(self.init_fraction * radius / n, u)
        return self.project(x, center, radius)

    def step(self, x: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        """Normalised-gradient step: the L2 steepest-ascent direction, length ``step_size``."""
        gn = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        return torch.addcmul(x, grad, _bcast(step_size / gn, grad))

    def project(self, x: Tensor, center: Tensor, radius: Tensor) -> Tensor:
        """Exact projection onto the ball ∩ box (see :mod:`models.synthesis.projection`)."""
        return project_l2_ball_box(x, center, radius, self.lo, self.hi, sparse=not self.deterministic)
