"""A data-driven surrogate that learns from the lab's own responses: V1-like front end, trained core.

Frozen backbones are fitted only through a linear readout; this candidate also learns its core,
from every response the loop has recorded, perturbed twins included, so the directions the
brain actually responded to shape the model. Its inductive bias is V1's: the fixed Gabor front
end of :mod:`models.vone` (band-limited, oriented, colour-opponent, divisively normalised), then a
small trainable convolutional core and a per-site factorised readout (a spatial mask times
feature weights, in the style of neuralpredictors), so its gradients stay at V1-like scales.

Training is deterministic for a seed, early-stopped on image families (a clean image and all its
twins) that it never trains on, and warm-started from the previous night's weights when the
architecture matches, so each night adds to what the last one learned. The front end is fixed,
so its features are computed once per image and training runs on small 8x8 maps: a few seconds
per night at demo scale on two CPU cores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.vone import VOneFrontEnd

__all__ = ["TrainReport", "TrainedVOne", "front_maps", "train_core", "trained_vone"]

log = logging.getLogger(__name__)


class TrainedVOne(nn.Module):
    """Fixed V1-like front end, trainable core, per-site factorised readout.

    Parameters
    ----------
    n_sites : int
    image_size : int
        Sets the front end's number of pyramid levels (hence its channels).
    channels : int, default 32
    grid : int, default 8

    Notes
    -----
    ``forward`` maps images (B, 3, H, W), already normalised by the backbone wrapper, to
    (B, n_sites) standardised responses through the layer ``sites``.
    """

    def __init__(self, n_sites: int, image_size: int, channels: int = 32, grid: int = 8) -> None:
        super().__init__()
        self.front = VOneFrontEnd(grid=grid)
        levels = self.front.levels_for(image_size)
        in_ch = 3 + 2 * self.front.n_orientations * (1 + 3 * (levels - 1))
        self.core = nn.Sequential(
            nn.Conv2d(in_ch, channels, 1),
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(),
        )
        self.mask = nn.Parameter(torch.zeros(n_sites, grid * grid))
        self.feature_weight = nn.Parameter(torch.zeros(n_sites, channels))
        self.bias = nn.Parameter(torch.zeros(n_sites))
        self.sites = nn.Identity()

    def from_front(self, front: torch.Tensor) -> torch.Tensor:
        """Responses from precomputed front-end maps (B, C, grid, grid)."""
        core = self.core(front).flatten(2)  # (B, channels, grid * grid)
        where = torch.softmax(self.mask, dim=1)  # (n_sites, grid * grid)
        pooled = torch.einsum("bcp,sp->bsc", core, where)
        return self.sites((pooled * self.feature_weight).sum(-1) + self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_front(self.front(x))


def trained_vone(n_sites: int = 1, image_size: int = 64, channels: int = 32, seed: int = 0) -> nn.Module:
    """Registry constructor (weights come from a checkpoint or :func:`train_core`)."""
    gen = torch.Generator().manual_seed(seed)
    net = TrainedVOne(n_sites, image_size, channels)
    with torch.no_grad():
        for p in net.core.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.zero_()
        net.feature_weight.copy_(torch.randn(net.feature_weight.shape, generator=gen) * 0.1)
    return net


def front_maps(
    net: TrainedVOne,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device | str,
    batch: int = 64,
) -> torch.Tensor:
    """The fixed front end's maps of images ``x`` (B, 3, H, W) in [0, 1], computed on ``device``.

    ``normalize`` is the backbone wrapper's input normalisation. The maps stay on ``device``:
    :func:`train_core` trains where they lie, so computing them on the GPU puts the training
    there too.
    """
    with torch.no_grad():
        return torch.cat([net.front(normalize(x[i : i + batch].to(device))) for i in range(0, len(x), batch)])


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    best_epoch: int
    val_r: float  # median over sites of the held-out correlation
    warm_started: bool
    held_out: np.ndarray  # bool (n_images,): images whose family was never trained on


def train_core(
    net: TrainedVOne,
    front: torch.Tensor,
    responses: np.ndarray,
    families: np.ndarray,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    val_share: float = 0.15,
    max_epochs: int = 200,
    patience: int = 15,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    feature_noise: float = 0.0,
) -> TrainReport:
    """Train ``net`` in place on precomputed front-end maps, early-stopped on held-out families.

    Training runs where ``front`` lies (``net`` is moved there): on the GPU when the caller
    computed the maps there, which is what makes paper-scale training take minutes.

    Parameters
    ----------
    front : Tensor of shape (n_images, C, grid, grid)
    responses : ndarray of shape (n_images, n_sites)
        Repeat-averaged responses; standardised per site inside (the readout above rescales).
    families : ndarray of shape (n_images,)
        A clean image and its twins share a family; validation holds out whole families.
    init_state : dict, optional
        Yesterday's weights: every tensor whose shape matches is loaded (a new site keeps a
        fresh readout).
    feature_noise : float, default 0
        Noise training: Gaussian noise of this many per-channel standard deviations is added to
        the front-end maps of every training batch, so the core cannot lean on tiny feature
        differences (a cheap stand-in for input-noise training, since the front end is fixed).
    """
    torch.manual_seed(seed)
    device = front.device
    warm = _warm_start(net.to(device), init_state)
    yz = _standardised(responses).to(device)
    held = _held_out_families(families, val_share, seed)
    tr, va = torch.from_numpy(~held).to(device), torch.from_numpy(held).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, since = -np.inf, None, 0, 0
    channel_sd = front[tr].std(dim=(0, 2, 3), keepdim=True) if feature_noise > 0 else torch.zeros(())
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        _train_epoch(net, opt, front[tr], yz[tr], feature_noise, channel_sd)
        net.eval()
        with torch.no_grad():
            pred = net.from_front(front[va]).cpu().numpy()
        r = _median_r(pred, yz[va].cpu().numpy())
        if r > best + 1e-4:
            best, best_epoch, since = r, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    log.info(
        "trained core: %d epochs (best %d), held-out median r %.3f, warm %s", epoch, best_epoch, best, warm
    )
    return TrainReport(epoch, best_epoch, float(best), warm, held)


def _warm_start(net: TrainedVOne, init_state: dict[str, torch.Tensor] | None) -> bool:
    """Load every tensor of ``init_state`` whose name and shape match; True if any did."""
    if not init_state:
        return False
    own = net.state_dict()
    usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
    own.update(usable)
    net.load_state_dict(own)
    return bool(usable)


def _standardised(responses: np.ndarray) -> torch.Tensor:
    """Responses z-scored per site (a constant site only centred), NaN as 0, as float32."""
    y = np.asarray(responses, dtype=np.float64)
    mu, sd = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    return torch.from_numpy(np.nan_to_num((y - mu) / np.where(sd > 0, sd, 1.0))).float()


def _held_out_families(families: np.ndarray, val_share: float, seed: int) -> np.ndarray:
    """Images whose family is drawn (seeded) into the validation share, so no twin leaks into training."""
    uniq = np.unique(families)
    rng = np.random.default_rng(seed)
    val_fams = set(rng.choice(uniq, size=max(1, int(round(val_share * len(uniq)))), replace=False).tolist())
    return np.array([f in val_fams for f in families])


def _train_epoch(
    net: TrainedVOne,
    opt: torch.optim.Optimizer,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    feature_noise: float,
    channel_sd: torch.Tensor,
    batch: int = 128,
) -> None:
    """One pass over the training images in a random order, in mini-batches (noise added if asked)."""
    net.train()
    n_tr = x_tr.shape[0]
    order = torch.randperm(n_tr).to(x_tr.device)  # drawn on the CPU: the same order on any device
    for i in range(0, n_tr, batch):
        idx = order[i : i + batch]
        xb = x_tr[idx]
        if feature_noise > 0:
            xb = xb + feature_noise * channel_sd * torch.randn_like(xb)
        loss = F.mse_loss(net.from_front(xb), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _median_r(pred: np.ndarray, y: np.ndarray) -> float:
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    denom = np.sqrt((pc**2).sum(0) * (yc**2).sum(0))
    r = np.where(denom > 0, (pc * yc).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(np.median(r))
