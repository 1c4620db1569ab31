"""Linear-nonlinear populations whose sensitive directions lie in natural-image statistics.

:class:`~models.simulator.brain.VirtualBrain` (the "orthogonal" family) puts each site's
sensitive part outside the leading principal components of clean images, so no surrogate
fitted on clean responses can find it. A lab will also meet the opposite case, and everything
in between; these families share the orthogonal brain's tuning, rates, latencies and exact
truth (:mod:`models.simulator.exact`), and change only the sensitive part:

* :class:`NaturalBrain` ("natural"): the sensitive part is a random combination of clean-image
  principal components 8-63, i.e. smooth directions along which clean images do vary (less
  than along the tuning). A surrogate that predicts clean responses well has seen them.
* ``orthogonal_weight=w`` ("mix25", "mix50"): the sensitive part is
  ``sqrt(1 - w) * natural + sqrt(w) * orthogonal`` (both unit norm), so a share ``1 - w`` of its
  squared norm is natural-aligned.
* :class:`BlurBrain` ("blur"): the natural population seen through optics: a Gaussian blur and
  a 4x4 area sampling to 16x16. The optics are linear, so the site stays linear-nonlinear in
  pixels with weights ``O^T w`` (``w`` its weights on the 16x16 image, ``O`` the optics) and the
  truth stays exact. Fine-scale gradient energy is wasted on these sites.

Scale: after the sensitive part is added the drive is recalibrated to unit standard deviation
over the calibration images, as for the orthogonal brain; the knob ``sensitivity`` is the
sensitive part's norm before that rescaling. The default (0.2, 0.7) gives weight norms of about
0.35-0.65 against 0.25-0.5 for the orthogonal brain, so normalised sensitivities at eps 1-4 are
comparable (measured in ``tests/models/test_simulator_families.py``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from models.simulator.brain import VirtualBrain

__all__ = ["BlurBrain", "NaturalBrain", "natural_subspace_share"]

#: Principal components 0-7 carry the tuning; the natural sensitive part uses the next ones.
_FIRST_SENSITIVE_PC = 8


def natural_subspace_share(w: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    """Per row of ``w``, the share of its squared norm inside the span of ``pcs`` (orthonormal rows)."""
    inside = np.sum((w @ pcs.T) ** 2, axis=1)
    total = np.sum(w**2, axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


class NaturalBrain(VirtualBrain):
    """LN population with a share ``1 - orthogonal_weight`` of its sensitive part in natural statistics.

    Parameters
    ----------
    orthogonal_weight : float in [0, 1], default=0.0
        Share of the sensitive part's squared norm that is the orthogonal brain's adversarial
        part (0: "natural", 0.25: "mix25", 0.5: "mix50").
    sensitivity : float, (low, high) tuple or array, default=(0.2, 0.7)
        Norm of each site's sensitive part before the drive is recalibrated (see module doc).
    **kwargs
        The other :class:`~models.simulator.brain.VirtualBrain` parameters.

    Attributes
    ----------
    natural_share_per_site_ : ndarray of shape (n_sites,)
        Measured share of each site's sensitive part inside the leading 64 clean-image
        components; ``natural_share`` is its mean.
    """

    family = "natural"

    def __init__(
        self,
        *,
        orthogonal_weight: float = 0.0,
        sensitivity: float | tuple[float, float] | np.ndarray = (0.2, 0.7),
        **kwargs,
    ) -> None:
        if not 0.0 <= orthogonal_weight <= 1.0:
            raise ValueError("orthogonal_weight must lie in [0, 1]")
        self.orthogonal_weight = float(orthogonal_weight)
        super().__init__(sensitivity=sensitivity, **kwargs)

    def _natural_direction(self, n_sites: int, pcs: np.ndarray) -> np.ndarray:
        """Unit-norm random combinations of clean-image components 8-63, one per site."""
        rng = np.random.default_rng([self.seed, 0x4E41])  # own stream: the rest of the brain is unchanged
        coef = rng.standard_normal((n_sites, pcs.shape[0]))
        coef[:, :_FIRST_SENSITIVE_PC] = 0.0
        d = coef @ pcs
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def _compose_weights(
        self, smooth: np.ndarray, adversarial: np.ndarray, *, pcs: np.ndarray, xc_centred: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        nat = self._natural_direction(smooth.shape[0], pcs)
        norm = np.linalg.norm(adversarial, axis=1, keepdims=True)
        orth = adversarial / np.where(norm > 0, norm, 1.0)
        w = self.orthogonal_weight
        sens = self.sensitivity_[:, None] * (np.sqrt(1.0 - w) * nat + np.sqrt(w) * orth)
        smooth, sens = self._optics(smooth), self._optics(sens)
        sd = (xc_centred @ (smooth + sens).T).std(axis=0)
        scale = (1.0 / np.where(sd > 0, sd, 1.0))[:, None]
        smooth, sens = smooth * scale, sens * scale
        self._drive_scale = scale
        self.natural_share_per_site_ = natural_subspace_share(sens, pcs)
        self.natural_share = float(self.natural_share_per_site_.mean())
        return smooth, sens

    def _optics(self, w: np.ndarray) -> np.ndarray:
        """What the site's weights become after its optics; none here (see :class:`BlurBrain`)."""
        return w


class BlurBrain(NaturalBrain):
    """The natural population seen through optical blur at a lower resolution.

    The site sees ``O x``: a Gaussian blur of ``blur_sigma`` pixels (zero padding, a symmetric
    operator) followed by ``factor x factor`` area sampling, an image of ``image_size // factor``
    pixels. Its weights on that image are ``low_res_weights_``; in pixels they are
    ``O^T low_res_weights_``, so ``rates`` and the exact truth are those of an LN population.

    Parameters
    ----------
    factor : int, default=4
        Area-sampling factor (64x64 images are seen at 16x16).
    blur_sigma : float, default=1.5
        Optical blur in pixels of the full-resolution image.
    **kwargs
        :class:`NaturalBrain` parameters.

    Attributes
    ----------
    low_res_weights_ : ndarray of shape (n_sites, 3 * (image_size // factor) ** 2)
    """

    family = "blur"

    def __init__(self, *, factor: int = 4, blur_sigma: float = 1.5, **kwargs) -> None:
        size = kwargs.get("image_size", 64)
        if factor < 1 or size % factor or blur_sigma < 0:
            raise ValueError("factor must divide image_size and blur_sigma must be >= 0")
        self.factor, self.blur_sigma = int(factor), float(blur_sigma)
        self._seen: list[np.ndarray] = []
        super().__init__(**kwargs)
        # The weights were built as O^T (O w_raw) * scale, so on the 16x16 image they are O w_raw * scale.
        self.low_res_weights_ = (self._seen[0] + self._seen[1]) * self._drive_scale
        del self._seen

    def see(self, images: np.ndarray) -> np.ndarray:
        """The optics ``O``: (N, 3, H, W) float images to (N, 3 * (H // factor) ** 2)."""
        x = np.asarray(images, dtype=np.float64)
        n, f = x.shape[0], self.factor
        blurred = gaussian_filter(x, sigma=(0, 0, self.blur_sigma, self.blur_sigma), mode="constant")
        low = blurred.reshape(n, 3, x.shape[2] // f, f, x.shape[3] // f, f).mean(axis=(3, 5))
        return low.reshape(n, -1)

    def _adjoint(self, low: np.ndarray) -> np.ndarray:
        """``O^T``: (N, 3 * (H // factor) ** 2) to (N, 3 * H * W)."""
        n, f, size = low.shape[0], self.factor, self.image_size
        m = size // f
        up = np.repeat(np.repeat(low.reshape(n, 3, m, m), f, axis=2), f, axis=3) / f**2
        return gaussian_filter(up, sigma=(0, 0, self.blur_sigma, self.blur_sigma), mode="constant").reshape(
            n, -1
        )

    def _optics(self, w: np.ndarray) -> np.ndarray:
        size = self.image_size
        low = self.see(w.reshape(w.shape[0], 3, size, size))
        self._seen.append(low)
        return self._adjoint(low)
