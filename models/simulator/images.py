"""Procedural clean image sets for the virtual brain and the demo.

The images stand in for the paper's natural images. They need three properties, not
photorealism:

* **categories that a linear read-out of pixels can partly tell apart**, so that the
  virtual IT sites (linear-nonlinear in pixels) can be category selective and respond
  differently to different clean images;
* **natural-image statistics in the background** (1/f amplitude spectrum, correlated
  colour channels), so that most image variation is at low spatial frequencies and the
  brain's high-frequency "adversarial" tuning is nearly invisible on clean images, as the
  adversarial directions of real neurons are thought to be;
* **determinism by seed and no downloads**, so every test, demo and rig sees the same
  pixels.

Each category has a shape family (soft blob, bar, Gabor grating patch, ring, cross,
checker patch, ...) and a hue centred on its own point of the colour wheel; position,
size, orientation, aspect ratio, colour, contrast and the background all vary per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["REFERENCE_SEED", "SHAPE_NAMES", "make_clean_images", "make_reference_images"]

#: Seed of the fixed reference set shown every day (see DESIGN section 4).
REFERENCE_SEED = 20220611

_Shape = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _blob(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    return np.exp(-0.5 * ((u / s) ** 2 + (v / (s * aspect)) ** 2))


def _bar(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    edge = 0.08 * s
    return _sigmoid((1.3 * s - np.abs(u)) / edge) * _sigmoid((0.3 * s * aspect - np.abs(v)) / edge)


def _grating(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    n = u.shape[0]
    wavelength = s * rng.uniform(0.45, 0.7, size=(n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    env = np.exp(-0.5 * (u**2 + v**2) / (1.1 * s) ** 2)
    return env * (0.5 + 0.5 * np.cos(2 * np.pi * u / wavelength + phase))


def _ring(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    r = np.sqrt(u**2 + (v / aspect) ** 2)
    return np.exp(-0.5 * ((r - s) / (0.22 * s)) ** 2)


def _cross(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    return np.maximum(_bar(u, v, s, aspect, rng), _bar(v, u, s, aspect, rng))


def _checker(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    period = 0.6 * s
    pattern = _sigmoid(6.0 * np.sin(np.pi * u / period) * np.sin(np.pi * v / period))
    env = _sigmoid((1.1 * s - np.maximum(np.abs(u), np.abs(v))) / (0.1 * s))
    return env * pattern


def _triangle(u: np.ndarray, v: np.ndarray, s: np.ndarray, aspect: np.ndarray, rng: np.random.Generator):
    edge = 0.08 * s
    d = np.full_like(u, np.inf)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        # signed distance to each of the three edges, inside is positive
        d = np.minimum(d, 0.6 * s - (u * np.cos(angle) + v * np.sin(angle)))
    return _sigmoid(d / edge)


_SHAPES: tuple[tuple[str, _Shape], ...] = (
    ("blob", _blob),
    ("bar", _bar),
    ("grating", _grating),
    ("ring", _ring),
    ("cross", _cross),
    ("checker", _checker),
    ("triangle", _triangle),
)
#: Shape family of category ``c`` is ``SHAPE_NAMES[c % len(SHAPE_NAMES)]``.
SHAPE_NAMES = tuple(name for name, _ in _SHAPES)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB; inputs of shape (n,), output (n, 3)."""
    out = []
    for k0 in (5.0, 3.0, 1.0):
        k = (k0 + 6.0 * h) % 6.0
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def _pink_noise(rng: np.random.Generator, shape: tuple[int, ...], size: int, exponent: float = 1.0):
    """Gaussian fields with a 1/f**exponent amplitude spectrum, unit std per field."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = np.inf  # drop the DC term: the mean is set separately
    amp = f ** (-exponent)
    white = rng.standard_normal(shape + (size, size))
    field = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(size, size))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True) + 1e-12
    return field


def make_clean_images(
    n: int, size: int = 64, n_categories: int = 4, seed: int | Sequence[int] | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a procedural, seeded set of clean RGB images.

    Parameters
    ----------
    n : int
        Number of images.
    size : int, default=64
        Height and width in pixels.
    n_categories : int, default=4
        Number of categories. Category ``c`` draws its shape family from
        :data:`SHAPE_NAMES` (cycling) and its hue from ``c / n_categories`` on the colour
        wheel, so categories stay distinct when there are more categories than shapes.
    seed : int, sequence of ints or numpy.random.Generator, default=0
        Same seed, same pixels.

    Returns
    -------
    images : ndarray of shape (n, 3, size, size), dtype uint8
        Pixels; divide by 255 for the [0, 1] space in which epsilon is measured.
    categories : ndarray of shape (n,), dtype int64
        Category of each image; balanced (counts differ by at most one), shuffled.
    """
    if n < 0 or size < 8 or n_categories < 1:
        raise ValueError(f"need n >= 0, size >= 8, n_categories >= 1; got {n}, {size}, {n_categories}")
    rng = np.random.default_rng(seed)
    categories = rng.permutation(np.arange(n) % n_categories).astype(np.int64)
    # Background: luminance 1/f field, weaker 1/f colour-opponent fields, random mean tint.
    lum = _pink_noise(rng, (n,), size, exponent=1.4)
    chroma = _pink_noise(rng, (n, 2), size, exponent=1.7)
    mean_lum = rng.uniform(0.3, 0.65, size=(n, 1, 1, 1))
    tint = rng.normal(0.0, 0.04, size=(n, 3, 1, 1))
    contrast = rng.uniform(0.05, 0.14, size=(n, 1, 1, 1))
    opponent = np.array([[1.0, -0.5, -0.5], [0.0, 0.87, -0.87]])  # red-green, blue-yellow axes
    bg = mean_lum + tint + contrast * (lum[:, None] + 0.35 * np.einsum("nkhw,kc->nchw", chroma, opponent))

    images = bg
    coords = np.arange(size) - (size - 1) / 2.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    for c in range(n_categories):
        idx = np.flatnonzero(categories == c)
        if idx.size == 0:
            continue
        m = idx.size
        shape_fn = _SHAPES[c % len(_SHAPES)][1]
        centre = rng.normal(0.0, 0.12 * size, size=(m, 2)).clip(-0.25 * size, 0.25 * size)
        scale = rng.uniform(0.13, 0.24, size=(m, 1, 1)) * size
        theta = rng.uniform(0.0, np.pi, size=(m, 1, 1))
        aspect = rng.uniform(0.6, 1.0, size=(m, 1, 1))
        dx = xx[None] - centre[:, 0, None, None]
        dy = yy[None] - centre[:, 1, None, None]
        u = np.cos(theta) * dx + np.sin(theta) * dy
        v = -np.sin(theta) * dx + np.cos(theta) * dy
        mask = shape_fn(u, v, scale, aspect, rng)
        hue = (c / n_categories + 0.02 + rng.normal(0.0, 0.035, size=m)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 0.9, size=m), rng.uniform(0.6, 1.0, size=m))
        # Surface texture: the object's colour is modulated by its own small 1/f field.
        shading = 1.0 + 0.12 * _pink_noise(rng, (m,), size, exponent=1.5)[:, None]
        alpha = rng.uniform(0.75, 1.0, size=(m, 1, 1, 1)) * mask[:, None]
        obj = colour[:, :, None, None] * shading
        images[idx] = images[idx] * (1.0 - alpha) + obj * alpha
    out = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return out, categories


def make_reference_images(
    n: int = 16, size: int = 64, n_categories: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed reference set shown every day (noise ceilings, drift, normalisation).

    Same as :func:`make_clean_images` with the constant :data:`REFERENCE_SEED`, so that the
    reference set is identical across days, rigs and processes. Draw ordinary clean
    images with other seeds.

    Returns
    -------
    images : ndarray of shape (n, 3, size, size), dtype uint8
    categories : ndarray of shape (n,), dtype int64
    """
    return make_clean_images(n, size=size, n_categories=n_categories, seed=REFERENCE_SEED)
