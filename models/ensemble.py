"""An ensemble surrogate: the mean of several site encoders' predictions, differentiable as one.

Attacking the mean of several surrogates keeps only the directions they agree on, which are more
likely to be the brain's than any one surrogate's idiosyncrasies (the same reason ensembles of
models make more transferable adversarial examples in machine vision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["EnsembleEncoder"]


class EnsembleEncoder(nn.Module):
    """Mean prediction of ``members``, all of which map (B, 3, H, W) to (B, n_sites) in one site order.

    Parameters
    ----------
    members : sequence of nn.Module
        Encoders with a ``site_ids`` attribute; they must list the same sites in the same order.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        ids = [list(getattr(m, "site_ids", [])) for m in members]
        if any(i != ids[0] for i in ids):
            raise ValueError("ensemble members must predict the same sites in the same order")
        self.members = nn.ModuleList(members)
        self.site_ids: list[str] = ids[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)
