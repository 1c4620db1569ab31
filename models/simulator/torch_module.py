"""Differentiable torch view of a :class:`~models.simulator.brain.VirtualBrain`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from models.simulator.brain import VirtualBrain

__all__ = ["VirtualBrainModule"]


class VirtualBrainModule(nn.Module):
    """``r = baseline + gain * softplus(x.flatten(1) @ W.T + b)`` as a torch module.

    Parameters
    ----------
    brain : VirtualBrain
        The population to copy (weights are copied, not shared).
    dtype : torch.dtype, optional
        Buffer dtype; float32 by default. Inputs of another dtype or device get the buffers
        cast to theirs on the fly, so the module never decides the device by itself.
    """

    def __init__(self, brain: VirtualBrain, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dtype = dtype or torch.float32
        self.image_size = brain.image_size
        self.register_buffer("weight", torch.as_tensor(brain.weights_, dtype=dtype))
        self.register_buffer("bias", torch.as_tensor(brain.bias_, dtype=dtype))
        self.register_buffer("baseline", torch.as_tensor(brain.baseline_, dtype=dtype))
        self.register_buffer("gain", torch.as_tensor(brain.gain_, dtype=dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Rates (spikes/s) of shape (B, n_sites) for images of shape (B, 3, H, W) in [0, 1]."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must have shape (B, 3, {size}, {size}); got {tuple(images.shape)}")
        weight, bias, baseline, gain = (self._like(n, images) for n in ("weight", "bias", "baseline", "gain"))
        return baseline + gain * F.softplus(images.flatten(1) @ weight.T + bias)

    def _like(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` on the input's device and dtype (a no-op when it already is)."""
        buf = getattr(self, name)
        assert isinstance(buf, torch.Tensor)
        return buf.to(device=images.device, dtype=images.dtype)
