"""8-bit quantisation that keeps the shipped image inside the epsilon ball.

The rig shows ``uint8`` images, so the perturbation that counts is ``q / 255 - clean``, not the
float optimum.  Plain rounding adds roughly ``sqrt(d / 12) / 255`` of L2 norm (about 0.44 for a
224x224x3 image), mostly orthogonal to ``delta``, which can push an optimum that sits on the
sphere out of the ball.  The repair moves the fewest pixels one grey level toward the clean image,
preferring pixels whose move costs the least objective per unit of norm saved (first order, from
the gradient; without one, pixels that were rounded *away* from the clean image), until the
quantised image is inside the ball.

The reference for the ball is the clean image as given.  If it is not on the 8-bit grid the ball
may contain no 8-bit image at all for tiny epsilon; that raises :class:`QuantizationError`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QuantizationError", "quantize_in_ball", "SAFETY"]

#: Relative margin kept below epsilon so the guarantee survives float32 re-computation elsewhere.
SAFETY = 1e-6


class QuantizationError(ValueError):
    """No 8-bit image lies within epsilon of the (off-grid) clean image."""


def quantize_in_ball(
    x: Tensor, clean: Tensor, eps: Tensor, grad: Tensor | None = None, max_passes: int = 512
) -> tuple[Tensor, Tensor]:
    """Round ``x`` to 8 bits, then repair rows whose quantised perturbation leaves the ball.

    Parameters
    ----------
    x : Tensor of shape (B, C, H, W)
        Float images in [0, 1] (the optimised perturbed images).
    clean : Tensor of shape (B, C, H, W)
        The clean images the ball is centred on, in [0, 1].
    eps : Tensor of shape (B,)
        Ball radii.
    grad : Tensor of shape (B, C, H, W), optional
        Gradient of the objective (to maximise) at ``x``.  When given, the repair moves the pixels
        with the largest norm saving per unit of first-order objective loss first, so the shipped
        image keeps as much of the optimised change as the ball allows.
    max_passes : int
        Safety bound on repair passes; each pass moves pixels by one grey level.

    Returns
    -------
    q : Tensor of shape (B, C, H, W), uint8
        Quantised images with ``||q / 255 - clean||_2 <= eps * (1 - SAFETY)`` in float64.
    delta_l2 : Tensor of shape (B,), float64
        The achieved norms ``||q / 255 - clean||_2``.

    Raises
    ------
    QuantizationError
        If some row cannot be brought inside its ball.
    """
    b = x.shape[0]
    c = clean.double().reshape(b, -1)
    qf = (x.double().reshape(b, -1) * 255.0).round().clamp(0, 255)
    xf = x.double().reshape(b, -1)
    gf = None if grad is None else grad.double().reshape(b, -1)
    lim2 = (eps.double().to(x.device) * (1.0 - SAFETY)).square()

    def diff(qv: Tensor) -> Tensor:
        # Same arithmetic a consumer uses (``q.float() / 255 - clean`` in the clean's dtype), so an
        # on-grid float32 clean image gives exact zeros for unmoved pixels.
        return (qv / 255.0).to(clean.dtype).double() - c

    for _ in range(max_passes):
        d = diff(qf)
        n2 = d.square().sum(dim=1)
        bad = n2 > lim2
        if not bool(bad.any()):
            break
        idx = bad.nonzero().squeeze(1)
        qb = qf[idx]
        s, red, useful = _savings(d[idx])
        key = _move_priority(red, useful, s, qb, xf[idx], None if gf is None else gf[idx])
        take = _pixels_to_move(red, useful, key, (n2[idx] - lim2[idx]).unsqueeze(1))
        qf[idx] = (qb - torch.where(take, s, torch.zeros_like(s))).clamp(0, 255)
    else:
        raise QuantizationError("quantisation repair did not converge")
    delta = diff(qf).norm(dim=1)
    return qf.to(torch.uint8).reshape(x.shape), delta


def _savings(db: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pixel: direction away from clean, norm^2 saved by one grey level back, and whether that saves.

    Raises :class:`QuantizationError` when some row has no pixel whose move would save anything.
    """
    s = torch.sign(db)
    red = db.square() - (db - s / 255.0).square()  # norm^2 saved by one grey level toward clean
    useful = red > 0
    if not bool(useful.any(dim=1).all()):
        raise QuantizationError(
            "no 8-bit image lies within eps of the clean image (clean image is off the 8-bit grid "
            "and eps is smaller than its rounding distance)"
        )
    return s, red, useful


def _move_priority(
    red: Tensor, useful: Tensor, s: Tensor, qb: Tensor, xb: Tensor, gb: Tensor | None
) -> Tensor:
    """Order in which pixels move one grey level toward clean (higher first; -1 where useless).

    With a gradient: norm saved per unit of first-order objective lost.  Without one: norm saved,
    plus one for pixels that rounding pushed away from the clean image (moving them back is free).
    """
    if gb is None:
        outward = torch.sign(qb / 255.0 - xb) == s  # rounded away from the clean image
        key = red + outward.double()
    else:
        cost = (gb * s / 255.0).clamp_min(0.0)  # first-order objective loss of the move
        key = red / (cost + 1e-30)
    return torch.where(useful, key, torch.full_like(red, -1.0))


def _pixels_to_move(red: Tensor, useful: Tensor, key: Tensor, need: Tensor) -> Tensor:
    """Mask of the fewest top-priority pixels whose savings cover ``need`` (all useful ones if short)."""
    key_sorted, order = key.sort(dim=1, descending=True)
    red_sorted = torch.where(key_sorted > 0, red.gather(1, order), torch.zeros_like(key_sorted))
    csum = red_sorted.cumsum(dim=1)
    # Smallest k with cumulative saving >= need (all useful ones if not enough this pass).
    k = (csum < need).sum(dim=1) + 1
    k = torch.minimum(k, useful.sum(dim=1))
    take_sorted = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < k.unsqueeze(1)
    return torch.zeros_like(take_sorted).scatter(1, order, take_sorted)
