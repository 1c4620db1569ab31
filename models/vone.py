"""A fixed V1-like front end: a multi-scale Gabor bank, simple and complex cells, divisive normalisation.

Why it is a candidate at all: a surrogate's twins only move a brain when the surrogate's input
gradient points where the brain's does. A CNN with random or ImageNet weights puts much of its
gradient at fine spatial scales that IT barely responds to; a front end built like primate V1
(band-limited, oriented, colour-opponent filters at octave-spaced spatial frequencies, rectified
and energy-pooled, normalised by local contrast, as in VOneNet) constrains the gradient to
V1-like directions. A ridge readout on its features is then fitted per site like any backbone's.

Scales are built as an image pyramid: level ``L`` averages the image over ``2**L`` pixel blocks
and applies one small Gabor bank of wavelength ``wavelength_px`` there, so level ``L`` is tuned to
a wavelength of ``wavelength_px * 2**L`` original pixels (one octave per level, the bandwidth of a
typical V1 cell). Every level's maps are average-pooled to the same ``grid x grid`` positions, so
the readout sees position, scale, orientation, colour and phase for each location.

Everything is deterministic (no learned or random weights): the same image size gives the same
features on any machine, and the module has no checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.smooth_pool import SmoothPool2d

__all__ = ["VOneFrontEnd", "gabor_bank", "global_gabor_pairs", "vone", "vone_energy"]

# Luminance and two colour-opponent axes (red-green, blue-yellow), each a unit vector over RGB.
_OPPONENT = torch.tensor(
    [
        [1.0, 1.0, 1.0],
        [1.0, -1.0, 0.0],
        [-0.5, -0.5, 1.0],
    ]
)
_OPPONENT = _OPPONENT / _OPPONENT.norm(dim=1, keepdim=True)


def _gabor_sigma(wavelength_px: float, bandwidth_octaves: float = 1.0) -> float:
    """Envelope width of a Gabor whose spatial-frequency bandwidth is ``bandwidth_octaves``."""
    b = 2.0**bandwidth_octaves
    return wavelength_px / math.pi * math.sqrt(math.log(2) / 2) * (b + 1) / (b - 1)


def _colour_energy(even: torch.Tensor, odd: torch.Tensor, colour_pairs: bool) -> torch.Tensor:
    """Quadrature energies ``even**2 + odd**2`` per colour axis (dimension 1), then, with
    ``colour_pairs``, the cross energies of every pair of axes (the off-diagonal entries of the
    colour energy matrix; see :class:`VOneFrontEnd`), concatenated along that dimension.
    """
    energy = even * even + odd * odd
    colours = even.shape[1]
    if not colour_pairs or colours < 2:
        return energy
    pairs = [(a, c) for a in range(colours) for c in range(a + 1, colours)]
    cross = [even[:, a] * even[:, c] + odd[:, a] * odd[:, c] for a, c in pairs]
    return torch.cat([energy, torch.stack(cross, dim=1)], dim=1)


def gabor_bank(n_orientations: int, wavelength_px: float, bandwidth_octaves: float = 1.0) -> torch.Tensor:
    """Even and odd Gabor kernels, zero-mean and unit-norm: Tensor of shape (2 * n_orientations, k, k).

    ``sigma`` follows from the spatial-frequency bandwidth (one octave by default, the median of
    macaque V1 cells), and the kernel spans 2.5 sigmas each side.
    """
    sigma = _gabor_sigma(wavelength_px, bandwidth_octaves)
    half = max(1, math.ceil(2.5 * sigma))
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kernels = []
    for phase in (0.0, math.pi / 2):
        for k in range(n_orientations):
            theta = math.pi * k / n_orientations
            u = xx * math.cos(theta) + yy * math.sin(theta)
            g = envelope * torch.cos(2 * math.pi * u / wavelength_px + phase)
            g = g - g.mean() * envelope / envelope.mean()  # no response to uniform light
            kernels.append(g / g.norm())
    return torch.stack(kernels).float()


class VOneFrontEnd(nn.Module):
    """Multi-scale Gabor simple/complex cells with divisive normalisation, pooled to a grid.

    Parameters
    ----------
    n_orientations : int, default 8
    wavelength_px : float, default 3.0
        Wavelength of the finest level, in pixels (about 2.8 cycles/degree on a 64-pixel,
        8-degree image; 7.5 on 224 pixels).
    n_levels : int or None, default None
        Pyramid levels (octaves); ``None`` uses every level whose wavelength fits in half the image.
    grid : int or sequence of int, default 8
        Output positions per side. A sequence gives every layout of the same cells, each
        flattened channel-major and concatenated: (B, C * sum(g * g)) features, for a readout
        that reads one block per layout (:mod:`models.blended_readout`).
    norm_pool : int, default 5
        Size (in level pixels) of the neighbourhood whose mean complex-cell energy normalises a unit.
    simple_cells : bool, default True
        Offer signed simple cells beside the complex cells (the linear part of V1).
    squared_energy : bool, default False
        Complex cells as ``even**2 + odd**2`` (the energy model) instead of its square root.
    normalise : bool, default True
        Divide by the local mean energy (divisive normalisation).
    base_size : int or None, default None
        Average larger images down to this many pixels a side first (``None``: never).
    downsample_blur : float, default 0.0
        Blur (in ``base_size`` pixels) before that averaging (:class:`models.smooth_pool.SmoothPool2d`);
        ``0`` averages blocks, whose adjoint puts block edges into every gradient.
    coarsest : float, default 0.5
        Add levels while the wavelength is at most this fraction of the image side (above 0.5 the
        coarse levels are smaller than the kernel, and borders are replicated, not reflected).
    colour_pairs : bool, default False
        With ``squared_energy``, add the cross energies ``even_a * even_b + odd_a * odd_b`` of
        every pair of colour axes. With them the energies of a level are the six entries of each
        position's and orientation's 3x3 colour energy matrix, so the energy of a complex cell of
        *any* colour preference is a linear function of the features (without them only cells
        tuned to the luminance or one opponent axis are).
    global_octaves : int, default 0
        Octaves coarser than the pyramid's coarsest level, as whole-image cells (see
        :func:`global_gabor_pairs`): on a pyramid their kernels would be larger than the level
        itself and see mostly padding. Needs ``squared_energy`` without ``normalise`` or
        ``simple_cells``.
    global_centres : int, default 3
        Those cells' centres per side (a ``global_centres x global_centres`` layout of the image).

    Notes
    -----
    ``forward`` maps (B, 3, H, W) to (B, C, grid, grid) where ``C`` is, per level, the colour axes
    (luminance only at the finest level, luminance and two opponent axes above) x
    ``n_orientations`` x 2 cell types (a signed simple cell of even phase, a complex cell),
    plus 3 channels of grid-averaged colour (the linear low-pass part). The module is named
    ``output`` in :func:`vone` so feature extraction addresses it as that layer.
    """

    opponent: torch.Tensor  # buffers, declared so type checkers know they are tensors
    weight: torch.Tensor

    def __init__(
        self,
        n_orientations: int = 8,
        wavelength_px: float = 3.0,
        n_levels: int | None = None,
        grid: int | Sequence[int] = 8,
        norm_pool: int = 5,
        *,
        simple_cells: bool = True,
        squared_energy: bool = False,
        normalise: bool = True,
        base_size: int | None = None,
        downsample_blur: float = 0.0,
        coarsest: float = 0.5,
        colour_pairs: bool = False,
        global_octaves: int = 0,
        global_centres: int = 3,
    ) -> None:
        super().__init__()
        if colour_pairs and (not squared_energy or normalise or simple_cells):
            raise ValueError("colour_pairs needs squared_energy, without normalise or simple_cells")
        if global_octaves < 0 or global_centres < 1:
            raise ValueError("global_octaves must be >= 0 and global_centres >= 1")
        if global_octaves and (not squared_energy or normalise or simple_cells):
            raise ValueError("global_octaves needs squared_energy, without normalise or simple_cells")
        self.n_orientations = n_orientations
        self.wavelength_px = wavelength_px
        self.n_levels = n_levels
        self.grid: int | tuple[int, ...] = grid if isinstance(grid, int) else tuple(int(g) for g in grid)
        self.norm_pool = norm_pool
        self.simple_cells = simple_cells
        self.squared_energy = squared_energy
        self.normalise = normalise
        self.base_size = base_size
        # Area interpolation is adaptive average pooling; the blurred variant is SmoothPool2d.
        self.downsample: nn.Module = nn.Identity()
        if base_size is not None:
            blurred = downsample_blur > 0
            self.downsample = (
                SmoothPool2d(base_size, downsample_blur) if blurred else nn.AdaptiveAvgPool2d(base_size)
            )
        self.coarsest = coarsest
        self.colour_pairs = colour_pairs
        self.global_octaves = global_octaves
        self.global_centres = global_centres
        self._global_filters: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        # Reflection needs a border smaller than the level; coarse levels of a small image are
        # smaller than the kernel, so a front end that reaches them replicates the border.
        self._pad_mode = "reflect" if coarsest <= 0.5 else "replicate"
        bank = gabor_bank(n_orientations, wavelength_px)  # (2K, k, k): even phases, then odd
        # The image is first turned into luminance and opponent axes (a 1x1 mixing), then each
        # axis is filtered by the same bank: a third of the multiply-adds of one kernel per
        # (axis, phase, orientation) over all three input channels.
        self.register_buffer("opponent", _OPPONENT.clone()[:, :, None, None], persistent=False)
        self.register_buffer("weight", bank[:, None], persistent=False)

    def levels_for(self, size: int) -> int:
        if self.n_levels is not None:
            return self.n_levels
        if self.base_size is not None:
            size = min(size, self.base_size)
        levels = 0
        while self.wavelength_px * 2**levels <= size * self.coarsest and size // 2**levels >= 4:
            levels += 1
        return max(levels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.n_orientations
        weight = self.weight.to(dtype=x.dtype)
        even_w, odd_w = weight[:k], weight[k:]
        pad = weight.shape[-1] // 2
        if self.base_size is not None and min(x.shape[-2:]) > self.base_size:
            x = self.downsample(x)
        grids = (self.grid,) if isinstance(self.grid, int) else self.grid
        # Per layout: the low-pass colour channels, then each level's cells, pooled as each level
        # is made (so no level's full-resolution maps outlive its own step).
        layouts = [[F.adaptive_avg_pool2d(x, g)] for g in grids]
        axes = F.conv2d(x, self.opponent.to(dtype=x.dtype))  # luminance and opponent axes
        level_x = axes
        for level in range(self.levels_for(min(x.shape[-2:]))):
            if level:
                level_x = F.avg_pool2d(level_x, 2)
            # Colour-opponent cells are coarse in V1: the finest level sees luminance only, which
            # also keeps the full-resolution convolution (the front end's main cost) small.
            colours = 1 if level == 0 else 3
            b, _, h, w = level_x.shape
            # Every colour axis is filtered by the same bank: fold the axes into the batch.
            padded = F.pad(level_x[:, :colours], (pad,) * 4, mode=self._pad_mode).reshape(
                b * colours, 1, h + 2 * pad, w + 2 * pad
            )
            even = F.conv2d(padded, even_w).reshape(b, colours, k, h, w)
            odd = F.conv2d(padded, odd_w).reshape(b, colours, k, h, w)
            # colour_pairs implies squared_energy (checked in __init__).
            energy = _colour_energy(even, odd, self.colour_pairs)
            energy = energy if self.squared_energy else torch.sqrt(energy + 1e-6)
            if self.normalise:
                # Divisive normalisation by the local mean energy over colours and orientations.
                norm = F.avg_pool2d(
                    energy.mean(dim=(1, 2))[:, None],
                    self.norm_pool,
                    stride=1,
                    padding=self.norm_pool // 2,
                    count_include_pad=False,
                )
                scale = (1.0 / (0.1 + norm))[:, None]
                even, energy = even * scale, energy * scale
            # Signed simple cells (on minus off, what a linear readout of both would see) and
            # complex cells (phase-invariant energy).
            cells = torch.cat([even, energy], dim=2) if self.simple_cells else energy
            for maps, g in zip(layouts, grids, strict=True):
                maps.append(F.adaptive_avg_pool2d(cells.reshape(b, -1, h, w), g))
        if self.global_octaves:
            cells = self._global_cells(axes, self.wavelength_px * 2**level)
            for maps, g in zip(layouts, grids, strict=True):
                maps.append(F.adaptive_avg_pool2d(cells, g))
        if isinstance(self.grid, int):
            return torch.cat(layouts[0], dim=1)
        # Several layouts of the same cells, each flattened channel-major (models.blended_readout).
        return torch.cat([torch.cat(maps, dim=1).flatten(1) for maps in layouts], dim=1)

    def _global_cells(self, axes: torch.Tensor, coarsest_px: float) -> torch.Tensor:
        """Energies of the whole-image cells: (B, colours * orientations * octaves, c, c).

        ``axes`` is the image on the luminance and opponent axes; colours are those three axes
        (and their cross energies with ``colour_pairs``), as at the pyramid's coarse levels.
        ``coarsest_px`` is the pyramid's coarsest wavelength in pixels of ``axes``, the first
        global octave twice that.
        """
        size, k, c = axes.shape[-1], self.n_orientations, self.global_centres
        key = (size, axes.dtype, axes.device)
        if key not in self._global_filters:
            wavelengths = [coarsest_px * 2 ** (j + 1) for j in range(self.global_octaves)]
            bank = global_gabor_pairs(size, k, wavelengths, c)  # (octaves, 2, k, c, c, size * size)
            self._global_filters[key] = bank.to(device=axes.device, dtype=axes.dtype).reshape(-1, size * size)
        filters = self._global_filters[key]
        b = axes.shape[0]
        resp = (axes.flatten(2) @ filters.T).reshape(b, 3, self.global_octaves, 2, k, c, c)
        even, odd = resp[:, :, :, 0], resp[:, :, :, 1]  # (B, 3, octaves, k, c, c)
        return _colour_energy(even, odd, self.colour_pairs).reshape(b, -1, c, c)


def global_gabor_pairs(
    size: int, n_orientations: int, wavelengths: Sequence[float], centres: int
) -> torch.Tensor:
    """Quadrature pairs of whole-image Gabor filters: (octaves, 2, orientations, c, c, size * size).

    Each filter has the one-octave envelope of :func:`gabor_bank` at its wavelength, is cut off
    at the image border (what a cell whose receptive field is larger than the image sees), made
    blind to uniform light over the part inside the image, and scaled to unit norm. Centres sit
    on a ``centres x centres`` layout of the image.
    """
    f64 = torch.float64
    coords = torch.arange(size, dtype=f64) - (size - 1) / 2.0
    offsets = (torch.arange(centres, dtype=f64) + 0.5) / centres * size - size / 2.0
    # Broadcast shape: (octave, phase, orientation, centre y, centre x, pixel y, pixel x).
    wavelength = torch.tensor(list(wavelengths), dtype=f64).reshape(-1, 1, 1, 1, 1, 1, 1)
    sigma = torch.tensor([_gabor_sigma(w) for w in wavelengths], dtype=f64).reshape(-1, 1, 1, 1, 1, 1, 1)
    phase = torch.tensor([0.0, math.pi / 2], dtype=f64).reshape(1, 2, 1, 1, 1, 1, 1)
    theta = (math.pi * torch.arange(n_orientations, dtype=f64) / n_orientations).reshape(1, 1, -1, 1, 1, 1, 1)
    dy = coords.reshape(1, 1, 1, 1, 1, -1, 1) - offsets.reshape(1, 1, 1, -1, 1, 1, 1)
    dx = coords.reshape(1, 1, 1, 1, 1, 1, -1) - offsets.reshape(1, 1, 1, 1, -1, 1, 1)
    envelope = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    g = envelope * torch.cos(
        2 * math.pi * (dx * torch.cos(theta) + dy * torch.sin(theta)) / wavelength + phase
    )
    sums = (-2, -1)
    g = g - envelope * (
        g.sum(dim=sums, keepdim=True) / envelope.sum(dim=sums, keepdim=True)
    )  # blind to uniform light
    g = g / torch.linalg.vector_norm(g, dim=sums, keepdim=True)
    return g.flatten(-2).float()


class _VOneNet(nn.Module):
    """Registry wrapper: the front end is the layer ``output``."""

    def __init__(self, **kw: float | int | bool | Sequence[int] | None) -> None:
        super().__init__()
        self.output = VOneFrontEnd(**kw)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(x)


def vone(
    n_orientations: int = 8,
    wavelength_px: float = 3.0,
    n_levels: int | None = None,
    grid: int = 8,
    seed: int = 0,
) -> nn.Module:
    """The V1-like front end as a backbone (``seed`` is accepted for the registry and unused)."""
    del seed
    return _VOneNet(n_orientations=n_orientations, wavelength_px=wavelength_px, n_levels=n_levels, grid=grid)


def vone_energy(
    grid: int | Sequence[int] = 2,
    base_size: int = 48,
    seed: int = 0,
    blur: float = 0.75,
    colour_pairs: bool = False,
    global_octaves: int = 0,
) -> nn.Module:
    """Complex-cell energy at coarse scales: the candidate for sites whose gradient depends on the image.

    A linear model in pixels (``pixels16``) has one gradient per site whatever the image; a site
    built from phase-invariant subunits (complex cells, energy models) has a gradient whose sign
    and direction follow the image's local phase, which no linear model can point along. This
    front end offers squared quadrature energies ``even**2 + odd**2`` only (the Adelson-Bergen
    energy model; a readout on them is a quadratic model of the image whose gradient is
    ``2 * (even * grad even + odd * grad odd)``, image-dependent like the site's), without simple
    cells (their linear part is what ``pixels16`` gives, and the ensemble of the two is linear
    plus quadratic) and without divisive normalisation.

    The image is first blurred (a Gaussian of ``blur`` base-size pixels) and averaged down to
    ``base_size`` pixels a side (:mod:`models.smooth_pool`: without the blur, the averaging's
    adjoint puts block edges into every gradient), then filtered at four
    octaves of wavelengths from ``base_size / 10.7`` to ``base_size / 1.3`` (1.3 to 10.7 cycles
    per image, 0.17 to 1.3 cycles per degree on the rig's 8-degree images): the coarse scales IT
    sites, with their large receptive fields, respond to, at the same cost for 64- and 224-pixel
    images. Energies are pooled to a ``grid x grid`` layout (2x2: a site's readout sees the
    quadrant, not the exact position, which keeps the features few enough for one day's images).

    Measured on a V1-like energy population (``benchmarks/bench_surrogates.py``, 300 noisy
    training images): the gradient agreement with the brain was 0.03 for ``vone``, 0.14 with
    ``vone``'s cells at these coarse scales, 0.27 with squared energies only (no simple cells, no
    normalisation) on a 4x4 grid and 0.32 on 2x2. With 600 training images (seeds 0-2), blurring
    before the downsampling raised it from 0.33 / 0.31 / 0.31 to 0.37 / 0.35 / 0.36 at the same
    predictivity. ``seed`` is accepted for the registry and unused.

    ``colour_pairs`` adds the cross energies of the colour axes (:class:`VOneFrontEnd`), so that a
    readout can model a complex cell of any colour preference, not only of the luminance or one
    opponent axis; ``vone_energy_blend`` uses them (``docs/choosing-perturbations.md``).

    ``global_octaves`` adds octaves below 1.3 cycles per image as whole-image cells on a 3x3
    layout of centres (:func:`global_gabor_pairs`), for sites whose receptive fields are as large
    as the image; ``vone_energy_blend`` uses one (0.67 cycles per image).
    """
    del seed
    return _VOneNet(
        wavelength_px=6.0 * base_size / 64,
        grid=grid,
        simple_cells=False,
        squared_energy=True,
        normalise=False,
        base_size=base_size,
        downsample_blur=blur,
        coarsest=1.0,
        colour_pairs=colour_pairs,
        global_octaves=global_octaves,
    )
