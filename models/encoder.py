"""Site encoder: backbone -> layer features -> linear readout, one output column per IT site.

The synthesis engine differentiates this module with respect to its input images, so everything
from pixels to predicted responses is one torch graph. The ridge readout's standardisation is
already folded into its coefficients (``MultiRidgeCV.coef_`` is in raw feature units), so the readout
is a single ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.features import FeatureExtractor, Pool
from models.readout import MultiRidgeCV


class SiteEncoder(nn.Module):
    """Predict the responses of many sites to images in [0, 1].

    Parameters
    ----------
    backbone : nn.Module
        Takes images in [0, 1]; its parameters are frozen (gradients flow to the input only).
    layer : str
        Feature layer name.
    pool : {"avg", "max", "flatten", "none"}
    weight : array-like of shape (n_sites, n_features)
    bias : array-like of shape (n_sites,)
    site_ids : sequence of str
        Column ``i`` of the output is site ``site_ids[i]``.

    Notes
    -----
    ``forward`` maps (B, 3, H, W) to (B, n_sites) and is differentiable with respect to the images.
    Cast the whole module (``.double()``) for float64 gradient checks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layer: str,
        pool: Pool,
        weight: np.ndarray | torch.Tensor,
        bias: np.ndarray | torch.Tensor,
        site_ids: Sequence[str],
    ):
        super().__init__()
        w = torch.as_tensor(np.asarray(weight) if not isinstance(weight, torch.Tensor) else weight)
        b = torch.as_tensor(np.asarray(bias) if not isinstance(bias, torch.Tensor) else bias)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(
                f"weight must be (n_sites, n_features) and bias (n_sites,), got {w.shape}, {b.shape}"
            )
        if len(site_ids) != w.shape[0]:
            raise ValueError(f"{len(site_ids)} site ids for {w.shape[0]} readout rows")
        if len(set(site_ids)) != len(site_ids):
            raise ValueError("site ids must be unique")
        self.site_ids: list[str] = [str(s) for s in site_ids]
        backbone.requires_grad_(False)
        backbone.eval()
        self.features = FeatureExtractor(backbone, layer, pool)
        # skip_init: the weights are overwritten, so do not draw (and shift) the global RNG.
        dtype = next((p.dtype for p in backbone.parameters()), torch.float32)
        self.readout = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], dtype=dtype)
        with torch.no_grad():
            self.readout.weight.copy_(w.to(self.readout.weight.dtype))
            self.readout.bias.copy_(b.to(self.readout.bias.dtype))
        self.readout.requires_grad_(False)

    @classmethod
    def from_readout(
        cls,
        backbone: nn.Module,
        layer: str,
        pool: Pool,
        readout: MultiRidgeCV,
        site_ids: Sequence[str],
    ) -> SiteEncoder:
        """Compose a backbone with a fitted :class:`MultiRidgeCV` readout."""
        if not hasattr(readout, "coef_"):
            raise ValueError("readout is not fitted")
        return cls(backbone, layer, pool, readout.coef_.T, readout.intercept_, site_ids)

    @property
    def layer(self) -> str:
        return self.features.layer

    @property
    def pool(self) -> str:
        return self.features.pool

    def site_index(self, site_id: str) -> int:
        """Output column of a site."""
        try:
            return self.site_ids.index(site_id)
        except ValueError:
            raise KeyError(f"site {site_id!r} is not in this encoder") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted responses, Tensor of shape (B, n_sites)."""
        return self.readout(self.features(x).flatten(1))


def predict_batched(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: str | torch.device,
    batch_size: int = 64,
) -> torch.Tensor:
    """Predictions of ``model`` for images ``x`` (on any device), in batches, gradient-free, on the CPU.

    Batches keep a large pool within device memory; the result stays on the CPU because callers
    index it per site and image.
    """
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        )
