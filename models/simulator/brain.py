"""A ground-truth IT population whose adversarial sensitivity is known exactly.

Every site is linear-nonlinear in pixels::

    u_i(x) = a_i . x + b_i                      (x: flattened image in [0, 1], C-H-W order)
    r_i(x) = baseline_i + gain_i * softplus(u_i(x))      spikes/s

The weights ``a_i`` are the sum of two parts:

* a **smooth part**, a category template (the difference between the mean image of the site's
  preferred category and the grand mean, blurred) mixed with a random smooth colour-opponent
  receptive field. This is what clean images drive: sites prefer categories and vary in
  tuning. It plays the role of a linear filter bank with colour opponency and linear pooling.
* an **adversarial part**, band-pass (high spatial frequency) noise with the leading principal
  components of clean-image variation and the smooth part projected out. Clean images barely
  drive it, so it is hard to learn from clean responses, yet it sets how far a small
  perturbation can move the site. Its L2 norm is the per-site ``sensitivity`` knob.

Because ``u_i`` is linear and softplus is monotone, the largest rate change inside
``{||delta||_2 <= eps, 0 <= x + delta <= 1}`` is reached at the extreme of ``a_i . delta``,
which :mod:`models.simulator.exact` computes exactly. The brain is deliberately *not* a CNN, so
a surrogate CNN fitted to its responses gives a genuine lower bound, as in the paper.

Scale choices (defaults, 64x64 images)
--------------------------------------
The smooth part is scaled so that ``u_i`` has standard deviation 1 over clean images (the
calibration set); the mean drive is drawn in [-0.3, 0.6], gains in [10, 22] spikes/s and
baselines in [3, 8] spikes/s, so clean-image rates span about 5-80 spikes/s (median ~18) and
``sigma_i`` is 4-14 spikes/s. With ``sigma_u = 1`` the box-free, small-epsilon normalised
sensitivity of a site is close to ``||a_i|| * eps``, where
``||a_i||^2 = ||smooth||^2 + sensitivity_i^2``; the smooth norm comes out at 0.2-0.4 (it is
set by how much clean images vary along the tuning direction), the knob defaults to
[0.1, 0.35]. Measured on 100 clean images (population median, 5th-95th percentile over sites,
paper definition ``max(up, down)``): eps 0.5: 0.20 (0.15-0.24); eps 1: 0.41 (0.31-0.49);
eps 2: 0.86 (0.65-1.06); eps 4: 1.92 (1.42-2.38). The softplus is convex, so the upward
direction grows faster than linearly and dominates at large epsilon. That brackets the paper's
IT figures (about 0.3-1 at eps 1-3 on 224x224 images). A 64x64 image has 12,288 pixel values
against 150,528 at 224x224, so the same L2 epsilon is a 3.5-fold larger per-pixel (RMS)
change here: a 64x64 brain at a given epsilon is comparable to the paper at a larger one.
Only the adversarial part is invisible to clean images; a surrogate that learnt the smooth
part perfectly would find roughly ``||smooth|| / ||a_i||`` (about 0.6-0.9) of the true
sensitivity, a lower bound as in the paper.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from models.simulator.exact import argmax_linear_ball_box, max_linear_ball_box
from models.simulator.images import make_clean_images
from models.simulator.spikes import PresentationSpikes

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Sensitivity", "VirtualBrain", "softplus"]

logger = logging.getLogger(__name__)


def softplus(u: np.ndarray) -> np.ndarray:
    """Numerically stable ``log(1 + exp(u))``."""
    return np.logaddexp(0.0, u)


def _as_float_images(images: np.ndarray, size: int) -> np.ndarray:
    """Validate (N, 3, size, size) images and return them flattened as float64 in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"images must have shape (N, 3, {size}, {size}); got {images.shape}")
    if images.dtype == np.uint8:
        x = images.astype(np.float64) / 255.0
    else:
        x = images.astype(np.float64)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError("float images must lie in [0, 1]")
    return x.reshape(x.shape[0], -1)


@dataclass(frozen=True)
class Sensitivity:
    """Exact adversarial sensitivity of every site at every image.

    Arrays have shape (n_sites, n_images) for a scalar epsilon, (n_eps, n_sites, n_images) for
    an array of epsilons; units are those of the rates (spikes/s) unless normalised.

    Attributes
    ----------
    up : ndarray
        ``max_delta r_i(x + delta) - r_i(x)`` (>= 0).
    down : ndarray
        ``r_i(x) - min_delta r_i(x + delta)`` (>= 0).
    """

    up: np.ndarray
    down: np.ndarray

    @property
    def max(self) -> np.ndarray:
        """``s_i(x, eps) = max_delta |r_i(x + delta) - r_i(x)|``, the paper's definition."""
        return np.maximum(self.up, self.down)

    @property
    def mean(self) -> np.ndarray:
        """Average of the two directions, for comparison with estimates pooled over up and down."""
        return 0.5 * (self.up + self.down)

    def per_site(self, which: Literal["max", "up", "down", "mean"] = "max") -> np.ndarray:
        """Site sensitivity ``s_i(eps) = E_x[s_i(x, eps)]``: average over the image axis."""
        return np.asarray(getattr(self, which)).mean(axis=-1)


def _resolve_sensitivity(sensitivity, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    # Always draw, so that the rest of the brain does not depend on how the knob is given:
    # brains that differ only in `sensitivity` share every other parameter.
    draw = rng.random(n_sites)
    if isinstance(sensitivity, tuple):
        if len(sensitivity) != 2 or not 0 <= sensitivity[0] <= sensitivity[1]:
            raise ValueError("a sensitivity range must be a (low, high) tuple with 0 <= low <= high")
        return sensitivity[0] + (sensitivity[1] - sensitivity[0]) * draw
    arr = np.asarray(sensitivity, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_sites, float(arr))
    if arr.shape != (n_sites,) or np.any(arr < 0):
        raise ValueError(f"sensitivity must be >= 0: a scalar, a (low, high) tuple or {n_sites} values")
    return arr.copy()


@functools.lru_cache(maxsize=4)
def _calibration(size: int, n_categories: int, n_calibration: int):
    """The calibration "visual diet": clean images, categories and their principal components.

    Fixed for a given image size and category count (not per brain), so that brains with
    different seeds live in the same image world, and cached because building it dominates
    the cost of a brain. Returned arrays are read-only.
    """
    images, cats = make_clean_images(
        n_calibration, size=size, n_categories=n_categories, seed=[0xCA11, size, n_categories]
    )
    x = images.reshape(n_calibration, -1).astype(np.float64) / 255.0
    # Principal components through the small (n x n) Gram matrix: much cheaper than an SVD of
    # the (n x D) data when D = 3 * size**2 is large.
    xc = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(xc @ xc.T)
    top = np.argsort(evals)[::-1][: n_calibration - 1]  # centring removes one dimension
    sv = np.sqrt(np.clip(evals[top], 0.0, None))
    vt = (evecs[:, top].T @ xc) / sv[:, None]
    for arr in (x, cats, sv, vt):
        arr.setflags(write=False)
    return x, cats, sv, vt


class VirtualBrain(PresentationSpikes):
    """Synthetic IT population with exactly computable adversarial sensitivity.

    The population is built in the constructor from the keyword parameters and ``seed``
    alone, so two brains with the same parameters are identical.

    Parameters
    ----------
    n_sites : int, default=32
    image_size : int, default=64
        Images must be (N, 3, image_size, image_size).
    n_categories : int, default=4
        Categories of :func:`~models.simulator.images.make_clean_images` the sites are tuned to.
    sensitivity : float, (low, high) tuple or array of shape (n_sites,), default=(0.1, 0.35)
        L2 norm of each site's adversarial weights, in units of the clean-image standard
        deviation of the drive ``u_i`` (which is calibrated to 1): roughly the normalised
        sensitivity per unit epsilon. A tuple is a range sampled uniformly per site.
    category_weight : float in [0, 1], default=0.7
        Share of the clean-image drive variance that comes from the category template (the
        rest from the random smooth receptive field). Higher means more category selective.
    seed : int, default=0
    n_calibration : int, default=256
        Clean images used to build templates and calibrate the drive: a fixed set per
        (image_size, n_categories, n_calibration), shared by all seeds.

    Attributes
    ----------
    weights_ : ndarray of shape (n_sites, 3 * image_size**2)
        ``a_i``, per unit of pixel value in [0, 1], C-H-W order.
    smooth_weights_, adversarial_weights_ : ndarray of shape (n_sites, 3 * image_size**2)
        The two parts of ``weights_``.
    bias_ : ndarray of shape (n_sites,)
    baseline_, gain_ : ndarray of shape (n_sites,)
        Spikes/s.
    sensitivity_ : ndarray of shape (n_sites,)
        The resolved knob.
    preferred_category_ : ndarray of shape (n_sites,)
    latency_s_ : ndarray of shape (n_sites,)
        Response latency in seconds, in [0.08, 0.10].
    spontaneous_rate_ : ndarray of shape (n_sites,)
        Firing rate outside the response window, spikes/s: between the 10th and 30th
        percentile of the site's clean-image rates, so most images drive it and some suppress.
    """

    #: Name of this family in :data:`models.simulator.families.FAMILIES`.
    family = "orthogonal"
    #: Share of the sensitive part's squared norm that lies in natural-image statistics: none,
    #: the adversarial part is orthogonal to the leading clean-image components by construction.
    natural_share = 0.0
    #: Whether :meth:`true_sensitivity` is exact (closed form) rather than a strong attack.
    exact = True

    def __init__(
        self,
        *,
        n_sites: int = 32,
        image_size: int = 64,
        n_categories: int = 4,
        sensitivity: float | tuple[float, float] | np.ndarray = (0.1, 0.35),
        category_weight: float = 0.7,
        seed: int = 0,
        n_calibration: int = 256,
    ) -> None:
        self.n_sites = n_sites
        self.image_size = image_size
        self.n_categories = n_categories
        self.sensitivity = sensitivity
        self.category_weight = category_weight
        self.seed = seed
        self.n_calibration = n_calibration
        if n_sites < 1 or n_categories < 1 or n_calibration < 2 * n_categories:
            raise ValueError("need n_sites >= 1, n_categories >= 1 and n_calibration >= 2 * n_categories")
        if not 0.0 <= category_weight <= 1.0:
            raise ValueError("category_weight must lie in [0, 1]")
        self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        rng = np.random.default_rng([self.seed, 0x17])
        size, n_sites = self.image_size, self.n_sites
        xc, calib_cat, sv, vt = _calibration(size, self.n_categories, self.n_calibration)
        xc_centred = xc - xc.mean(axis=0)
        self.sensitivity_ = _resolve_sensitivity(self.sensitivity, n_sites, rng)
        self.preferred_category_ = rng.permutation(np.arange(n_sites) % self.n_categories)

        # Random smooth receptive fields: Gaussian envelope x smooth field x colour opponency.
        coords = np.arange(size) - (size - 1) / 2.0
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        centre = rng.normal(0.0, 0.12 * size, size=(n_sites, 2))
        width = rng.uniform(0.2, 0.4, size=(n_sites, 1, 1)) * size
        env = np.exp(
            -0.5 * ((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2) / width**2
        )
        field = gaussian_filter(rng.standard_normal((n_sites, size, size)), sigma=(0, 3.0, 3.0), mode="wrap")
        colour = rng.normal(0.0, 1.0, size=(n_sites, 3)) + rng.normal(0.0, 1.0, size=(n_sites, 1))
        rf_part = (colour[:, :, None, None] * (env * field)[:, None]).reshape(n_sites, -1)

        def unit_drive(w: np.ndarray) -> np.ndarray:
            """Scale each row so its projection of the clean images has unit std."""
            sd = (xc_centred @ w.T).std(axis=0)
            return w / np.where(sd > 0, sd, 1.0)[:, None]

        # The smooth part lives in the span of the leading principal components of clean
        # images (natural image variation); the adversarial part is orthogonal to that span.
        n_pc = min(64, self.n_calibration - 1)
        pcs = vt[:n_pc]
        z = xc_centred @ pcs.T

        # Category templates: shrinkage discriminants (class mean minus grand mean, whitened
        # by the shrunk within-class covariance) in PC space, mixed with a little weight on the
        # other categories so that tuning is graded, not one-hot.
        zm = np.stack([z[calib_cat == c].mean(axis=0) for c in range(self.n_categories)])
        within = sum(np.cov(z[calib_cat == c].T) for c in range(self.n_categories)) / self.n_categories
        shrink = 3.0 * np.trace(within) / n_pc
        templates = np.linalg.solve(within + shrink * np.eye(n_pc), zm.T).T @ pcs
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        mix = rng.normal(0.0, 0.2, size=(n_sites, self.n_categories))
        mix[np.arange(n_sites), self.preferred_category_] = 1.0
        cat_part = mix @ templates

        # Weighting the receptive fields by each component's share of clean-image spread (as a
        # covariance-weighted filter would) keeps them on high-variance directions, so that
        # clean images, not small perturbations, are what moves the smooth drive most.
        rf_part = (rf_part @ pcs.T * (sv[:n_pc] / sv[0])[None, :]) @ pcs
        smooth = unit_drive(
            np.sqrt(self.category_weight) * unit_drive(cat_part)
            + np.sqrt(1.0 - self.category_weight) * unit_drive(rf_part)
        )

        # Adversarial part: band-pass noise outside the clean-image subspace, scaled to the knob.
        noise = rng.standard_normal((n_sites, 3, size, size))
        band = gaussian_filter(noise, sigma=(0, 0, 0.5, 0.5)) - gaussian_filter(noise, sigma=(0, 0, 1.5, 1.5))
        adv = band.reshape(n_sites, -1)
        adv -= (adv @ pcs.T) @ pcs
        adv *= (self.sensitivity_ / np.linalg.norm(adv, axis=1))[:, None]

        # Families built on this population (models/simulator/natural.py) replace the sensitive
        # part here; they draw from their own generator so every other parameter stays the same.
        smooth, adv = self._compose_weights(smooth, adv, pcs=pcs, xc_centred=xc_centred)
        self.smooth_weights_ = smooth
        self.adversarial_weights_ = adv
        self.weights_ = smooth + adv
        mu = rng.uniform(-0.3, 0.6, size=n_sites)
        self.bias_ = mu - xc.mean(axis=0) @ self.weights_.T
        self.gain_ = rng.uniform(10.0, 22.0, size=n_sites)
        self.baseline_ = rng.uniform(3.0, 8.0, size=n_sites)
        self.latency_s_ = rng.uniform(0.08, 0.10, size=n_sites)
        calib_rates = self._rates_flat(xc)
        q = rng.uniform(0.1, 0.3, size=n_sites)
        self.spontaneous_rate_ = np.array([np.quantile(calib_rates[:, i], q[i]) for i in range(n_sites)])
        logger.debug(
            "virtual brain: %d sites, clean rates %.1f-%.1f spikes/s, adversarial drive std %.3f",
            n_sites,
            calib_rates.min(),
            calib_rates.max(),
            float((xc_centred @ adv.T).std(axis=0).mean()),
        )

    def _compose_weights(
        self, smooth: np.ndarray, adversarial: np.ndarray, *, pcs: np.ndarray, xc_centred: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (tuning, sensitive) parts of the weights; here the orthogonal adversarial part as drawn.

        A hook for the other families of :mod:`models.simulator.families`: ``pcs`` are the
        leading principal components of clean images (rows, unit norm) and ``xc_centred`` the
        centred calibration images, so an override can place its sensitive part in (or out of)
        natural-image statistics and recalibrate the drive. It must not draw from the brain's
        own generator.
        """
        return smooth, adversarial

    # ------------------------------------------------------------------ responses
    def _rates_flat(self, x: np.ndarray) -> np.ndarray:
        return self.baseline_ + self.gain_ * softplus(x @ self.weights_.T + self.bias_)

    def _rate_of_drive(self, u: np.ndarray) -> np.ndarray:
        """Rates from drives ``u`` whose second-to-last axis is the site axis: (..., n_sites, n_images)."""
        return self.baseline_[:, None] + self.gain_[:, None] * softplus(u)

    def drive(self, images: np.ndarray) -> np.ndarray:
        """Linear drive ``u_i(x) = a_i . x + b_i``: ndarray of shape (n_images, n_sites)."""
        return _as_float_images(images, self.image_size) @ self.weights_.T + self.bias_

    def rates(self, images: np.ndarray) -> np.ndarray:
        """Exact mean rate of every site to every image.

        Parameters
        ----------
        images : ndarray of shape (n_images, 3, H, W)
            uint8 (0-255) or float in [0, 1].

        Returns
        -------
        ndarray of shape (n_images, n_sites)
            Spikes/s.
        """
        return self._rates_flat(_as_float_images(images, self.image_size))

    def clean_std(self, images: np.ndarray) -> np.ndarray:
        """``sigma_i``: standard deviation (ddof=0) of each site's rate over ``images``, (n_sites,)."""
        return self.rates(images).std(axis=0)

    # ------------------------------------------------------------------ sensitivity
    def true_sensitivity(self, images: np.ndarray, eps: float | np.ndarray) -> Sensitivity:
        """Exact ``max |r_i(x + delta) - r_i(x)|`` over ``||delta||_2 <= eps`` inside the [0, 1] box.

        Parameters
        ----------
        images : ndarray of shape (n_images, 3, H, W)
            Clean images, uint8 or float in [0, 1].
        eps : float or ndarray of shape (n_eps,)
            L2 radii in [0, 1] pixel space.

        Returns
        -------
        Sensitivity
            ``up``/``down`` (and ``max``, ``mean``) of shape (n_sites, n_images), or
            (n_eps, n_sites, n_images) for an array of radii. Spikes/s.
        """
        x = _as_float_images(images, self.image_size)
        eps_arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        u = x @ self.weights_.T + self.bias_  # (n_images, n_sites)
        gain_up = np.empty((eps_arr.size, self.n_sites, x.shape[0]))
        gain_down = np.empty_like(gain_up)
        for i, a in enumerate(self.weights_):
            gain_up[:, i] = max_linear_ball_box(a, x, eps_arr)
            gain_down[:, i] = max_linear_ball_box(-a, x, eps_arr)
        r0 = self._rate_of_drive(u.T)
        up = self._rate_of_drive(u.T + gain_up) - r0
        down = r0 - self._rate_of_drive(u.T - gain_down)
        if np.ndim(eps) == 0:
            up, down = up[0], down[0]
        return Sensitivity(up=up, down=down)

    def true_sensitivity_cases(
        self, images: np.ndarray, sites: np.ndarray, eps: float | np.ndarray
    ) -> Sensitivity:
        """Exact sensitivity of paired cases: site ``sites[k]`` at image ``k`` and radius ``eps[k]``.

        What the demo's truth needs (one site per shipped twin), without the cost of every site
        at every image.

        Returns
        -------
        Sensitivity
            ``up``/``down`` of shape (n_cases,), spikes/s.
        """
        x = _as_float_images(images, self.image_size)
        sites = np.asarray(sites, dtype=np.int64)
        eps_arr = np.broadcast_to(np.asarray(eps, dtype=np.float64), sites.shape)
        if sites.shape != (x.shape[0],) or np.any((sites < 0) | (sites >= self.n_sites)):
            raise ValueError(f"need one site index in [0, {self.n_sites}) per image")
        up, down = np.zeros(len(sites)), np.zeros(len(sites))
        for i in np.unique(sites):
            for e in np.unique(eps_arr[sites == i]):
                rows = np.flatnonzero((sites == i) & (eps_arr == e))
                a, b = self.weights_[i], self.bias_[i]
                u = x[rows] @ a + b
                r0 = self.baseline_[i] + self.gain_[i] * softplus(u)
                gu = max_linear_ball_box(a, x[rows], float(e))
                gd = max_linear_ball_box(-a, x[rows], float(e))
                up[rows] = self.baseline_[i] + self.gain_[i] * softplus(u + gu) - r0
                down[rows] = r0 - self.baseline_[i] - self.gain_[i] * softplus(u - gd)
        return Sensitivity(up=up, down=down)

    def true_normalised_sensitivity(
        self, images: np.ndarray, eps: float | np.ndarray, clean_images: np.ndarray | None = None
    ) -> Sensitivity:
        """:meth:`true_sensitivity` divided by ``sigma_i`` over the clean images' true rates.

        ``sigma_i`` comes from ``clean_images`` when given (e.g. the whole clean set), else
        from ``images`` themselves, which then need at least two distinct images.
        """
        sigma = self.clean_std(images if clean_images is None else clean_images)
        if np.any(sigma <= 0):
            raise ValueError("sigma_i is zero for some site: normalise over at least two distinct images")
        s = self.true_sensitivity(images, eps)
        return Sensitivity(up=s.up / sigma[:, None], down=s.down / sigma[:, None])

    def optimal_perturbation(
        self, images: np.ndarray, eps: float, site: int, direction: Literal["up", "down"] = "up"
    ) -> np.ndarray:
        """The exact optimal ``delta`` for one site, one radius and one direction.

        Returns
        -------
        ndarray of shape (n_images, 3, H, W), float64
            ``x + delta`` lies in [0, 1] and ``||delta||_2 <= eps``.
        """
        if direction not in ("up", "down"):
            raise ValueError("direction must be 'up' or 'down'")
        x = _as_float_images(images, self.image_size)
        a = self.weights_[site] if direction == "up" else -self.weights_[site]
        return argmax_linear_ball_box(a, x, eps).reshape(x.shape[0], 3, self.image_size, self.image_size)

    # ------------------------------------------------------------------ torch
    def as_torch_module(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A differentiable ``nn.Module`` computing the same rates for (B, 3, H, W) images in [0, 1].

        Useful to run the synthesis engine on the true brain. Parameters are buffers (not
        trained); the module follows the input's device and dtype.
        """
        from models.simulator.torch_module import VirtualBrainModule

        return VirtualBrainModule(self, dtype=dtype)
