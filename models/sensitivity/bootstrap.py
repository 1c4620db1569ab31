"""Vectorised hierarchical bootstrap over sites and, within a site, over items.

Items are pairs or clean images. Each site's items are packed to the front of a
NaN-padded array so that one bootstrap draw for a whole batch of resamples is a
single ``take`` per feature.
Resamples are processed in chunks only to bound memory, never one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .data import BoolArray, FloatArray, IntArray

__all__ = ["Items", "draw", "finite_mean", "pack", "percentile_interval"]

#: Largest number of array elements one chunk of resamples may gather.
MAX_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Items:
    """Per-site items packed to the front.

    Attributes
    ----------
    names : tuple of str, length n_features
        Feature names, the keys :func:`draw` returns.
    values : ndarray of shape (n_features, n_sites, max_items)
        Features of each item; NaN beyond a site's count. A feature may also be
        NaN for a valid item (e.g. an image with one repeat has no split half);
        statistics skip it with :func:`finite_mean`.
    counts : ndarray of int, shape (n_sites,)
        Number of valid items per site.
    """

    names: tuple[str, ...]
    values: FloatArray
    counts: IntArray

    @property
    def max_items(self) -> int:
        return self.values.shape[2]


def pack(features: Mapping[str, FloatArray], valid: BoolArray) -> Items:
    """Pack the valid items of each site to the front.

    Parameters
    ----------
    features : mapping of str to ndarray of shape (n_sites, n_items)
    valid : ndarray of bool, shape (n_sites, n_items)
    """
    stacked = np.stack([np.asarray(f, dtype=np.float64) for f in features.values()])
    counts = valid.sum(axis=1).astype(np.int64)
    width = int(max(counts.max(initial=0), 1))
    if valid.shape[1] < width:  # no item axis at all
        values = np.full(stacked.shape[:2] + (width,), np.nan)
    else:
        order = np.argsort(~valid, axis=1, kind="stable")[:, :width]
        values = np.take_along_axis(stacked, order[None], axis=2)
    values[:, np.arange(width)[None, :] >= counts[:, None]] = np.nan
    return Items(tuple(features), values, counts)


def draw(
    items: Items, site_idx: IntArray, rng: np.random.Generator | None, names: Sequence[str]
) -> dict[str, FloatArray]:
    """Gather items for a batch of (re)sampled sites.

    Parameters
    ----------
    items : Items
    site_idx : ndarray of int, shape (n_draws, n_slots)
        Which site fills each slot of each draw.
    rng : numpy.random.Generator or None
        None: take each site's items as they are (the point estimate). Otherwise
        resample items with replacement within each slot, independently per slot,
        so a site drawn twice gets two independent item resamples.
    names : sequence of str
        Features to gather; all share the same item indices.

    Returns
    -------
    dict of str to ndarray of shape (n_draws, n_slots, max_items)
        NaN beyond the slot's item count.
    """
    width = items.max_items
    n = items.counts[site_idx][..., None]
    pos = np.arange(width)
    valid = pos < n
    if rng is None:
        j = np.broadcast_to(pos, valid.shape)
    else:
        j = np.where(valid, (rng.random(valid.shape) * n).astype(np.int64), 0)
    flat = site_idx[..., None] * width + j
    out = {}
    for name in names:
        v = items.values[items.names.index(name)].ravel().take(flat)
        v[~valid] = np.nan
        out[name] = v
    return out


def finite_mean(x: FloatArray, axis: int = -1) -> FloatArray:
    """Mean of the finite entries along ``axis``; NaN (without a warning) where there are none."""
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    s = np.where(finite, x, 0.0).sum(axis=axis)
    return np.divide(s, n, out=np.full(np.shape(s), np.nan), where=n > 0)


def chunk_sizes(n_boot: int, elements_per_draw: int) -> list[int]:
    """Split ``n_boot`` resamples into chunks that gather at most MAX_CHUNK_ELEMENTS."""
    size = max(1, MAX_CHUNK_ELEMENTS // max(elements_per_draw, 1))
    return [min(size, n_boot - k) for k in range(0, n_boot, size)]


def percentile_interval(boot: FloatArray, ci: float) -> tuple[FloatArray, FloatArray]:
    """Percentile interval along axis 0 over the finite resamples.

    A resample can be undefined (e.g. every resampled clean image of a site had
    the same response); such resamples are dropped rather than poisoning the
    interval. All-undefined columns give NaN, without warnings.

    Parameters
    ----------
    boot : ndarray of shape (n_boot, ...)
    ci : float
        Coverage, e.g. 0.95.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    srt = np.sort(boot, axis=0)  # NaN sorts last
    m = np.isfinite(boot).sum(axis=0)
    out = []
    for q in ((1.0 - ci) / 2.0, (1.0 + ci) / 2.0):
        pos = q * np.maximum(m - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
        a = np.take_along_axis(srt, lo[None], axis=0)[0]
        b = np.take_along_axis(srt, hi[None], axis=0)[0]
        val = a + (pos - lo) * (b - a)
        out.append(np.where(m > 0, val, np.nan))
    return out[0], out[1]
