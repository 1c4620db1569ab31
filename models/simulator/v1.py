"""A V1-like energy population ("v1"): Gabor quadrature pairs, divisive normalisation, pooling.

Each site pools a few complex-cell subunits around its own preferred position, orientation,
spatial frequency, envelope scale and colour::

    e_ik(x) = (g_ik_even . x)^2 + (g_ik_odd . x)^2            energy of subunit k of site i
    n_ik(x) = e_ik / (c50_i + mean_k e_ik + mean_p e_p)       divisive normalisation
    u_i(x)  = sum_k w_ik n_ik                                  positive pooling (w_ik > 0)
    r_i(x)  = baseline_i + gain_i * softplus((u_i - m_i) / s_i + mu_i)     spikes/s

``e_p`` are the energies of a fixed normalisation pool (broadband luminance subunits, the same
for every brain), ``m_i``/``s_i`` calibrate the drive to unit spread over clean images as in
:class:`~models.simulator.brain.VirtualBrain`, and baselines, gains, offsets, latencies and
spontaneous rates are drawn the same way, so rates span the same 5-170 spikes/s range.
Preferred spatial frequencies are 1-4 cycles per image (wavelengths of 16-64 pixels at 64x64),
where clean images carry most of their contrast: nothing here is orthogonal to natural images by
construction, and its sensitive directions are phase-shifted, local gratings at each site's
preferences, which a surrogate with a V1-like front end can represent. Each site pools 12
subunits spread over about 1.5 envelope widths, which keeps its normalised sensitivity within
about 2x of the orthogonal brain's (eps 1: median 0.8 against 0.41; the energy grows with the
square of contrast, so at eps 4 it is 4.6 against 1.9); sharper, single-subunit sites were 4x
more sensitive.

The population is not linear, so its white-box sensitivity has no closed form: it is the best of
a strong multi-restart attack by the project's own synthesis engine on the simulator itself
(:mod:`models.simulator.whitebox`), cached per image, site and radius.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.simulator.brain import Sensitivity, _as_float_images, _calibration
from models.simulator.spikes import PresentationSpikes

if TYPE_CHECKING:  # pragma: no cover
    from models.simulator.whitebox import AttackConfig

__all__ = ["V1Brain", "V1Module", "gabor_pairs"]

logger = logging.getLogger(__name__)

_POOL_SEED = 0x5EED_0001
_N_POOL = 16


def gabor_pairs(
    size: int,
    centre: np.ndarray,
    theta: np.ndarray,
    cycles: np.ndarray,
    sigma: np.ndarray,
    colour: np.ndarray,
) -> np.ndarray:
    """Unit-norm, zero-mean quadrature pairs of colour Gabor filters.

    Parameters
    ----------
    size : int
        Image height and width.
    centre : ndarray of shape (n, 2)
        (x, y) offsets from the image centre, pixels.
    theta, cycles, sigma : ndarray of shape (n,)
        Orientation (radians), spatial frequency (cycles per image) and envelope s.d. (pixels).
    colour : ndarray of shape (n, 3)
        Channel weights of each filter.

    Returns
    -------
    ndarray of shape (n, 2, 3 * size * size)
        Even and odd filter of each pair, flattened C-H-W.
    """
    coords = np.arange(size) - (size - 1) / 2.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    u = np.cos(theta)[:, None, None] * dx + np.sin(theta)[:, None, None] * dy
    env = np.exp(-0.5 * (dx**2 + dy**2) / sigma[:, None, None] ** 2)
    phase = 2 * np.pi * cycles[:, None, None] * u / size
    out = []
    for wave in (np.cos(phase), np.sin(phase)):
        g = env * wave
        g = g - env * (g.sum(axis=(1, 2)) / env.sum(axis=(1, 2)))[:, None, None]  # no response to flat fields
        f = (colour[:, :, None, None] * g[:, None]).reshape(len(theta), -1)
        out.append(f / np.linalg.norm(f, axis=1, keepdims=True))
    return np.stack(out, axis=1)


class V1Module(nn.Module):
    """The V1 population's rates as a differentiable module (buffers only, nothing trained).

    Inputs are (B, 3, H, W) images in [0, 1]; buffers follow the input's device and dtype.
    """

    baseline: torch.Tensor  # buffers (register_buffer), declared so type checkers know they are tensors
    gain: torch.Tensor

    def __init__(
        self, brain: V1Brain, dtype: torch.dtype | None = None, sites: list[int] | None = None
    ) -> None:
        super().__init__()
        dtype = dtype or torch.float32
        idx = list(range(brain.n_sites)) if sites is None else list(sites)
        self.image_size, self.n_sites, self.n_subunits = brain.image_size, len(idx), brain.n_subunits
        for name in ("filters_", "c50_", "pool_weights_", "u_mean_", "u_sd_", "mu_", "baseline_", "gain_"):
            value = np.asarray(getattr(brain, name))[idx]
            self.register_buffer(name.rstrip("_"), torch.as_tensor(value, dtype=dtype))
        self.register_buffer("pool_filters", torch.as_tensor(brain.pool_filters_, dtype=dtype))

    def drive(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled normalised energy ``u_i`` of shape (B, n_sites)."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must have shape (B, 3, {size}, {size}); got {tuple(images.shape)}")
        b = {k: v.to(device=images.device, dtype=images.dtype) for k, v in self.named_buffers()}
        x = images.flatten(1)
        e = (x @ b["filters"].reshape(-1, x.shape[1]).T).reshape(x.shape[0], self.n_sites, self.n_subunits, 2)
        e = (e**2).sum(-1)
        pool = ((x @ b["pool_filters"].reshape(-1, x.shape[1]).T).reshape(x.shape[0], -1, 2) ** 2).sum(-1)
        denom = b["c50"] + e.mean(-1) + pool.mean(-1, keepdim=True)
        return ((e / denom[..., None]) * b["pool_weights"]).sum(-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Rates (spikes/s) of shape (B, n_sites)."""
        u = self.drive(images)
        b = {
            k: getattr(self, k).to(device=images.device, dtype=images.dtype) for k in ("u_mean", "u_sd", "mu")
        }
        z = (u - b["u_mean"]) / b["u_sd"] + b["mu"]
        return self.baseline.to(z) + self.gain.to(z) * F.softplus(z)


class V1Brain(PresentationSpikes):
    """V1-like energy population with a white-box reference by strong attack (see module doc).

    Parameters
    ----------
    n_sites : int, default=32
    image_size : int, default=64
    n_subunits : int, default=12
        Complex-cell subunits pooled per site, jittered around the site's preferences.
    seed : int, default=0
    n_categories, n_calibration : int, default=4, 256
        The shared calibration images of :class:`~models.simulator.brain.VirtualBrain`.
    cycles : (low, high), default=(1.0, 4.0)
        Range of preferred spatial frequencies, cycles per image (log-uniform).
    envelope : float, default=0.6
        Gaussian envelope s.d. in wavelengths.
    jitter : float, default=1.5
        Spread of the subunits' positions around the site's centre, in envelope s.d.
    c50 : (low, high), default=(2.0, 8.0)
        Semi-saturation constant, in units of the site's median clean-image energy.
    suppressive : float, default 0.0
        Fraction of each site's subunits that suppress it (cross-orientation suppression): they
        are turned to the orthogonal orientation and pooled with negative weights, so part of
        each site's sensitive direction is to *remove* contrast the site does not prefer.
    attack : AttackConfig, optional
        Strength of the white-box attack (:class:`models.simulator.whitebox.AttackConfig`).
    family : str, default="v1"
        The family name the population reports (``make_brain`` builds the held-out variants
        ``v1fine``, ``v1coarse`` and ``v1suppress`` from this class with other preferences).

    Attributes
    ----------
    filters_ : ndarray of shape (n_sites, n_subunits, 2, 3 * image_size**2)
    pool_filters_ : ndarray of shape (16, 2, 3 * image_size**2)
    c50_, u_mean_, u_sd_, mu_, baseline_, gain_, latency_s_, spontaneous_rate_ : ndarray (n_sites,)
    pool_weights_ : ndarray of shape (n_sites, n_subunits)
    preferred_cycles_, preferred_theta_ : ndarray of shape (n_sites,)
    """

    family = "v1"
    #: Nothing is orthogonal to natural images by construction; preferences sit at 1-4 cycles
    #: per image, where clean images carry their contrast (see the module doc).
    natural_share = 1.0
    exact = False

    def __init__(
        self,
        *,
        n_sites: int = 32,
        image_size: int = 64,
        n_subunits: int = 12,
        seed: int = 0,
        n_categories: int = 4,
        n_calibration: int = 256,
        cycles: tuple[float, float] = (1.0, 4.0),
        envelope: float = 0.6,
        jitter: float = 1.5,
        c50: tuple[float, float] = (2.0, 8.0),
        suppressive: float = 0.0,
        attack: AttackConfig | None = None,
        family: str = "v1",
    ) -> None:
        if n_sites < 1 or n_subunits < 1 or image_size < 16:
            raise ValueError("need n_sites >= 1, n_subunits >= 1 and image_size >= 16")
        if not 0.0 <= suppressive < 1.0:
            raise ValueError(f"suppressive must be in [0, 1); got {suppressive}")
        self.n_sites, self.image_size, self.n_subunits, self.seed = n_sites, image_size, n_subunits, seed
        self.n_categories, self.n_calibration = n_categories, n_calibration
        self.cycles, self.envelope, self.jitter, self.c50 = cycles, envelope, jitter, c50
        self.suppressive = suppressive
        self.attack, self.family = attack, family
        self._cache: dict[tuple[bytes, int, float], tuple[float, float]] = {}
        self._module64: V1Module | None = None
        self._build()

    def _build(self) -> None:
        rng = np.random.default_rng([self.seed, 0x71])
        n, k, size = self.n_sites, self.n_subunits, self.image_size
        centre = rng.normal(0.0, 0.12 * size, size=(n, 2)).clip(-0.3 * size, 0.3 * size)
        theta = rng.uniform(0.0, np.pi, size=n)
        cycles = np.exp(rng.uniform(np.log(self.cycles[0]), np.log(self.cycles[1]), size=n))
        colour = rng.normal(0.0, 1.0, size=(n, 3)) + rng.normal(0.0, 1.5, size=(n, 1))  # mostly luminance
        colour /= np.linalg.norm(colour, axis=1, keepdims=True)
        sigma = self.envelope * size / cycles * rng.uniform(0.8, 1.25, size=n)
        rep = np.repeat(np.arange(n), k)
        sub_centre = centre[rep] + rng.normal(0.0, self.jitter, size=(n * k, 2)) * sigma[rep, None]
        sub_theta = theta[rep] + rng.normal(0.0, 0.15, size=n * k)
        sub_cycles = cycles[rep] * 2.0 ** rng.normal(0.0, 0.15, size=n * k)
        # Suppressive subunits are the last ones of each site, turned to the orthogonal
        # orientation (no extra draws: the other families' populations stay the same).
        n_suppressive = round(self.suppressive * k)
        suppressive = np.tile(np.arange(k) >= k - n_suppressive, n)
        sub_theta = np.where(suppressive, sub_theta + np.pi / 2, sub_theta)
        self.filters_ = gabor_pairs(size, sub_centre, sub_theta, sub_cycles, sigma[rep], colour[rep]).reshape(
            n, k, 2, -1
        )
        self.preferred_cycles_, self.preferred_theta_ = cycles, theta
        prng = np.random.default_rng([_POOL_SEED, size])  # the same pool for every brain
        pc = np.exp(prng.uniform(np.log(1.5), np.log(12.0), size=_N_POOL))
        self.pool_filters_ = gabor_pairs(
            size,
            prng.normal(0.0, 0.15 * size, size=(_N_POOL, 2)),
            prng.uniform(0.0, np.pi, size=_N_POOL),
            pc,
            0.45 * size / pc,
            np.full((_N_POOL, 3), 1.0 / np.sqrt(3.0)),
        )
        self.pool_weights_ = rng.dirichlet(np.full(k, 2.0), size=n) * k
        self.pool_weights_[:, k - n_suppressive :] *= -1.0
        self.mu_ = rng.uniform(-0.3, 0.6, size=n)
        self.gain_ = rng.uniform(10.0, 22.0, size=n)
        self.baseline_ = rng.uniform(3.0, 8.0, size=n)
        self.latency_s_ = rng.uniform(0.08, 0.10, size=n)

        xc = _calibration(size, self.n_categories, self.n_calibration)[0]
        x = torch.as_tensor(np.array(xc).reshape(-1, 3, size, size))
        # c50 sits in each site's operating range: its median unnormalised energy on clean images.
        self.c50_, self.u_mean_, self.u_sd_ = np.ones(n), np.zeros(n), np.ones(n)
        e = self._energies(x)
        self.c50_ = np.median(e, axis=0) * rng.uniform(*self.c50, size=n)
        self._module64 = None
        u = self.module64().drive(x).numpy()
        self.u_mean_, self.u_sd_ = u.mean(axis=0), np.where(u.std(axis=0) > 0, u.std(axis=0), 1.0)
        self._module64 = None
        calib_rates = self.rates(xc.reshape(-1, 3, size, size))
        q = rng.uniform(0.1, 0.3, size=n)
        self.spontaneous_rate_ = np.array([np.quantile(calib_rates[:, i], q[i]) for i in range(n)])
        logger.debug(
            "v1 brain: %d sites, clean rates %.1f-%.1f spikes/s", n, calib_rates.min(), calib_rates.max()
        )

    def _energies(self, x: torch.Tensor) -> np.ndarray:
        """Mean subunit energy per site and image, (n_images, n_sites), before normalisation."""
        f = torch.as_tensor(self.filters_.reshape(-1, x[0].numel()))
        e = (x.flatten(1) @ f.T).reshape(x.shape[0], self.n_sites, self.n_subunits, 2)
        return (e**2).sum(-1).mean(-1).numpy()

    # ------------------------------------------------------------------ responses
    def module64(self) -> V1Module:
        """The float64 CPU module that defines the rates (cached)."""
        if self._module64 is None:
            self._module64 = V1Module(self, dtype=torch.float64)
        return self._module64

    def as_torch_module(self, dtype: torch.dtype | None = None) -> V1Module:
        """A differentiable module computing the same rates, for the synthesis engine."""
        return V1Module(self, dtype=dtype)

    def site_module(self, site: int, dtype: torch.dtype | None = None) -> V1Module:
        """The module of one site alone (output column 0): a cheaper target for the attack."""
        return V1Module(self, dtype=dtype, sites=[site])

    def rates(self, images: np.ndarray) -> np.ndarray:
        """Exact mean rate (spikes/s) of every site to (N, 3, H, W) uint8 or [0, 1] images: (N, n_sites)."""
        x = _as_float_images(images, self.image_size).reshape(-1, 3, self.image_size, self.image_size)
        with torch.no_grad():
            return self.module64()(torch.as_tensor(x)).numpy()

    def clean_std(self, images: np.ndarray) -> np.ndarray:
        """``sigma_i`` over ``images`` (ddof=0), (n_sites,)."""
        return self.rates(images).std(axis=0)

    # ------------------------------------------------------------------ white-box reference
    def true_sensitivity_cases(
        self, images: np.ndarray, sites: np.ndarray, eps: float | np.ndarray
    ) -> Sensitivity:
        """Best attack found per case (site ``sites[k]`` at image ``k``, radius ``eps[k]``), cached.

        Returns
        -------
        Sensitivity
            ``up``/``down`` of shape (n_cases,), spikes/s: a strong lower bound on the true
            maximum (see :mod:`models.simulator.whitebox` for how strong).
        """
        from models.simulator.whitebox import attack_cases

        x = _as_float_images(images, self.image_size)
        sites = np.asarray(sites, dtype=np.int64)
        eps_arr = np.broadcast_to(np.asarray(eps, dtype=np.float64), sites.shape)
        if sites.shape != (x.shape[0],) or np.any((sites < 0) | (sites >= self.n_sites)):
            raise ValueError(f"need one site index in [0, {self.n_sites}) per image")
        keys = [(x[j].tobytes(), int(sites[j]), float(eps_arr[j])) for j in range(len(sites))]
        todo, seen = [], set()
        for j, key in enumerate(keys):
            if key not in self._cache and key not in seen:
                seen.add(key)
                todo.append(j)
        if todo:
            size = self.image_size
            s = attack_cases(
                self, x[todo].reshape(-1, 3, size, size), sites[todo], eps_arr[todo], self.attack
            )
            for n, j in enumerate(todo):
                self._cache[keys[j]] = (float(s.up[n]), float(s.down[n]))
        got = np.array([self._cache[key] for key in keys]).reshape(-1, 2)
        return Sensitivity(up=got[:, 0], down=got[:, 1])

    def true_sensitivity(self, images: np.ndarray, eps: float | np.ndarray) -> Sensitivity:
        """Every site at every image: (n_sites, n_images), or (n_eps, n_sites, n_images) for arrays."""
        x = _as_float_images(images, self.image_size).reshape(-1, 3, self.image_size, self.image_size)
        eps_arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        n_img = x.shape[0]
        img = np.tile(np.arange(n_img), self.n_sites * eps_arr.size)
        site = np.tile(np.repeat(np.arange(self.n_sites), n_img), eps_arr.size)
        e = np.repeat(eps_arr, self.n_sites * n_img)
        s = self.true_sensitivity_cases(x[img], site, e)
        shape = (eps_arr.size, self.n_sites, n_img)
        up, down = s.up.reshape(shape), s.down.reshape(shape)
        if np.ndim(eps) == 0:
            up, down = up[0], down[0]
        return Sensitivity(up=up, down=down)
