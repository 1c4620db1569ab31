"""Model-free twins: a random direction of a given L2 length, kept in the pixel box, quantised to 8 bits.

They are the baseline every guided twin is measured against (how far does *any* step of this size
move a site?), so they go through the same ball-and-box projection and 8-bit repair as the attacks.
"""

from __future__ import annotations

import torch

from models.synthesis import project_l2_ball_box, quantize_in_ball


def random_direction(clean: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """``clean`` (C, H, W) in [0, 1] moved by at most ``eps`` along a seeded random direction; uint8.

    The direction is drawn on the CPU in float64 from ``seed`` alone, so it is the same on any
    machine; the result satisfies ``||q / 255 - clean||_2 <= eps``.
    """
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    d = d / d.norm() * eps
    x = project_l2_ball_box((clean.double() + d)[None], clean.double()[None], float(eps))
    q, _ = quantize_in_ball(x.float(), clean[None].float(), torch.tensor([float(eps)]))
    return q[0]
