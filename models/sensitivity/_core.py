"""Machinery behind the estimators: per-item features, statistics on resampled items, the bootstrap.

See :mod:`models.sensitivity.estimators` for what each estimator means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, Literal

import numpy as np

from .bootstrap import Items, chunk_sizes, draw, finite_mean, pack, percentile_interval
from .data import CleanResponses, FloatArray, IntArray, PairedResponses, trial_means
from .records import SensitivityEstimate

Sigma = Literal["plain", "noise_corrected", "none"]
PairSet = Literal["guided", "random", "all"]
PairEstimator = Literal["plain", "sign_corrected", "plain_noise_corrected", "noise_floor"]

_Stats = dict[str, FloatArray]

#: Relative spread below which a site's clean responses count as constant.
_CONST_RTOL = 1e-9


# ---------------------------------------------------------------- item features


def _split_unit(trials: FloatArray, n: IntArray, rng: np.random.Generator, n_splits: int) -> FloatArray:
    """Per image: mean over random half splits of ``|m1 - m2| / sqrt(1/h1 + 1/h2)``; NaN if < 2 repeats."""
    finite = np.isfinite(trials)
    packed = np.take_along_axis(trials, np.argsort(~finite, axis=-1, kind="stable"), axis=-1)
    pos = np.arange(trials.shape[-1])
    valid = pos < n[..., None]
    h1 = n // 2
    h2 = n - h1
    ok = h1 > 0
    acc = np.zeros(n.shape)
    for _ in range(n_splits):  # a handful of splits, each fully vectorised
        keys = np.where(valid, rng.random(trials.shape), np.inf)
        rank = np.argsort(np.argsort(keys, axis=-1), axis=-1)
        first = valid & (rank < h1[..., None])
        second = valid & ~first
        m1 = np.divide(np.where(first, packed, 0).sum(-1), h1, out=np.zeros(n.shape), where=ok)
        m2 = np.divide(np.where(second, packed, 0).sum(-1), h2, out=np.zeros(n.shape), where=ok)
        acc += np.abs(m1 - m2)
    scale = np.sqrt(
        np.divide(1.0, h1, out=np.ones(n.shape), where=ok)
        + np.divide(1.0, h2, out=np.ones(n.shape), where=ok)
    )
    return np.where(ok, acc / n_splits / scale, np.nan)


def clean_item_features(clean: CleanResponses, rng: np.random.Generator, n_splits: int) -> Items:
    """Features per clean image: mean, variance of the mean (trial noise), split-half noise unit."""
    trials = clean.trials
    means, n = trial_means(trials)
    s2 = _trial_variance(trials, means, n)
    s2 = np.where(n >= 2, s2, finite_mean(s2, axis=1)[:, None])  # one-repeat images borrow the site's mean
    noise = np.divide(s2, n, out=np.full(n.shape, np.nan), where=n > 0)
    unit = _split_unit(trials, n, rng, n_splits)
    return pack({"mean": means, "noise": noise, "unit": unit}, n > 0)


def pair_item_features(pairs: PairedResponses, which: PairSet) -> Items:
    """Features per pair: |d|, s*d (NaN without a predicted sign), sqrt(1/n_c + 1/n_p), d^2 - v."""
    mc, nc = trial_means(pairs.clean)
    mp, npert = trial_means(pairs.perturbed)
    d = mc - mp
    s = np.sign(pairs.pred_clean - pairs.pred_perturbed)
    signed = np.where(s != 0, s * d, np.nan)
    both = (nc > 0) & (npert > 0)
    inv_c = np.divide(1.0, nc, out=np.zeros(d.shape), where=both)
    inv_p = np.divide(1.0, npert, out=np.zeros(d.shape), where=both)
    s2c, s2p = _trial_variance(pairs.clean, mc, nc), _trial_variance(pairs.perturbed, mp, npert)
    pooled = finite_mean(np.concatenate([s2c, s2p], axis=1), axis=1)[:, None]  # for one-repeat sides
    v = np.where(np.isfinite(s2c), s2c, pooled) * inv_c + np.where(np.isfinite(s2p), s2p, pooled) * inv_p
    rd = np.asarray(pairs.random_direction, dtype=bool)
    select = {"guided": ~rd, "random": rd, "all": np.ones_like(rd)}[which]
    features = {"abs": np.abs(d), "signed": signed, "scale": np.sqrt(inv_c + inv_p), "excess": d**2 - v}
    return pack(features, both & np.isfinite(d) & select)


def _trial_variance(trials: FloatArray, means: FloatArray, n: IntArray) -> FloatArray:
    """Unbiased variance over repeats (last axis); NaN with fewer than two repeats."""
    dev = np.where(np.isfinite(trials), trials - np.nan_to_num(means)[..., None], 0.0)
    return np.divide((dev**2).sum(-1), n - 1, out=np.full(n.shape, np.nan), where=n >= 2)


# ---------------------------------------------------------------- statistics on drawn items


def _div(a: FloatArray | float, b: FloatArray | float) -> FloatArray:
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
    return np.divide(a, b, out=np.full(a.shape, np.nan), where=ok)


def _gini_mean_difference(m: FloatArray, n: IntArray) -> FloatArray:
    """Exact mean |m_j - m_k| over ordered pairs of distinct draws, along the last axis."""
    srt = np.sort(m, axis=-1)
    r = np.arange(m.shape[-1])
    w = 2 * r - n[..., None] + 1
    total = np.where(r < n[..., None], srt * w, 0.0).sum(-1)
    return _div(2.0 * total, n * (n - 1.0))


def clean_stats(x: dict[str, FloatArray], sigma: Sigma, need_gmd: bool) -> _Stats:
    m = x["mean"]
    finite = np.isfinite(m)
    n = finite.sum(-1)
    mu = finite_mean(m)
    var = _div(np.where(finite, (m - mu[..., None]) ** 2, 0.0).sum(-1), n - 1.0)
    var = np.where(n >= 2, var, np.nan)
    # Rounding can leave a constant site with a variance of 1e-34: call it zero.
    var = np.where(var <= (_CONST_RTOL * np.maximum(1.0, np.abs(mu))) ** 2, 0.0, var)
    if sigma == "plain":
        sd = np.sqrt(np.maximum(var, 0.0))
    elif sigma == "noise_corrected":
        v = var - finite_mean(x["noise"])
        sd = np.sqrt(np.where(v > 0, v, np.nan))
    else:
        sd = np.ones(n.shape)
    out = {"sigma": sd, "var": var, "n": n.astype(float)}
    if "unit" in x:
        out["unit"] = finite_mean(x["unit"])
    if need_gmd:
        out["gmd"] = _gini_mean_difference(m, n)
    return out


def _pair_stats(x: dict[str, FloatArray]) -> _Stats:
    out = {}
    for name, v in x.items():
        out[name] = finite_mean(v)
        out["n_" + name] = np.isfinite(v).sum(-1).astype(float)
    return out


def _root(ms: FloatArray) -> FloatArray:
    return np.sign(ms) * np.sqrt(np.abs(ms))


#: Per estimator: the pair feature it averages (its count is the n_pairs reported)
#: and its value from clean (c) and pair (p) statistics.
_KINDS: dict[str, tuple[str | None, Callable[[_Stats, _Stats], FloatArray]]] = {
    "plain": ("abs", lambda c, p: _div(p["abs"], c["sigma"])),
    "sign_corrected": ("signed", lambda c, p: _div(p["signed"], c["sigma"])),
    "noise_floor": ("scale", lambda c, p: _div(c["unit"] * p["scale"], c["sigma"])),
    "plain_noise_corrected": ("excess", lambda c, p: _div(_root(p["excess"]), c["sigma"])),
    "random_pair": (None, lambda c, p: _div(c["gmd"], c["sigma"])),
}


def _needs_clean(kind: str, sigma: Sigma) -> bool:
    return sigma != "none" or kind in ("random_pair", "noise_floor")


def site_reasons(
    kind: str, c: _Stats, p: _Stats | None, sigma: Sigma, min_pairs: int, min_images: int
) -> list[str | None]:
    """Why each site's point estimate is undefined (None where it is defined)."""
    n_sites = c["sigma"].shape[-1]
    needs_clean = _needs_clean(kind, sigma)
    out: list[str | None] = [None] * n_sites
    for i in range(n_sites):
        n_img = int(c["n"][0, i])
        if needs_clean and n_img < min_images:
            out[i] = f"too few clean images ({n_img} < {min_images})"
        elif needs_clean and c["var"][0, i] == 0:
            out[i] = "constant response over clean images (sigma_i = 0)"
        elif sigma == "noise_corrected" and not np.isfinite(c["sigma"][0, i]):
            out[i] = "noise-corrected variance of clean responses <= 0 (trial noise explains the spread)"
        elif kind == "noise_floor" and not np.isfinite(c["unit"][0, i]):
            out[i] = "no clean image with >= 2 repeats (noise floor undefined)"
        elif p is not None:
            feature = _KINDS[kind][0]
            k = int(p[f"n_{feature}"][0, i])
            if k < min_pairs:
                what = "pairs with a predicted change sign" if feature == "signed" else "pairs"
                out[i] = f"too few {what} ({k} < {min_pairs})"
    return out


class CleanBootstrap:
    """Clean-image statistics of every site (sigma_i, noise unit, random-pair spread), resampled once.

    Every estimator divides by sigma_i, and resampling a few hundred clean
    images for each of dozens of estimators dominated the cost. So each site's
    clean images are resampled ``n_boot`` times once and the resamples shared:
    per-site intervals use them row by row; a population resample fills each
    slot with one of its site's cached resamples picked at random, i.e. an
    independent draw from that site's bootstrap distribution.

    Parameters
    ----------
    items : Items
        From :func:`clean_item_features`.
    rng : Generator
    n_boot : int
    """

    def __init__(self, items: Items, rng: np.random.Generator, n_boot: int) -> None:
        self.items, self.rng, self.n_boot = items, rng, n_boot
        self.n_sites = items.counts.shape[0]
        self._point: dict[str, _Stats] = {}
        self._boot: dict[str, _Stats] = {}

    def _names(self, sigma: Sigma) -> tuple[str, ...]:
        return ("mean", "unit", "noise") if sigma == "noise_corrected" else ("mean", "unit")

    def point(self, sigma: Sigma, gmd: bool = False) -> _Stats:
        """Statistics of the data as they are, arrays of shape (1, n_sites)."""
        key = f"{sigma}/{gmd}"
        if key not in self._point:
            ident = np.arange(self.n_sites)[None, :]
            self._point[key] = clean_stats(draw(self.items, ident, None, self._names(sigma)), sigma, gmd)
        return self._point[key]

    def boot(self, sigma: Sigma, gmd: bool = False) -> _Stats:
        """Resampled statistics, arrays of shape (n_boot, n_sites)."""
        key = f"{sigma}/{gmd}"
        if key not in self._boot:
            names = self._names(sigma)
            ident = np.arange(self.n_sites)[None, :]
            width = self.items.max_items * len(names) * max(self.n_sites, 1)
            parts = [
                clean_stats(draw(self.items, np.repeat(ident, b, axis=0), self.rng, names), sigma, gmd)
                for b in chunk_sizes(self.n_boot, width)
            ]
            self._boot[key] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._boot[key]

    def slots(self, sigma: Sigma, gmd: bool, site_idx: IntArray, rng: np.random.Generator) -> _Stats:
        """Statistics for resampled sites: one random cached resample of its site per slot."""
        boot = self.boot(sigma, gmd)
        pick = rng.integers(0, self.n_boot, site_idx.shape)
        return {k: v[pick, site_idx] for k, v in boot.items()}


def _unit_sigma(shape: tuple[int, ...]) -> _Stats:
    """Stand-in clean statistics for raw-unit figures that never look at the clean images."""
    return {"sigma": np.ones(shape), "n": np.zeros(shape), "var": np.ones(shape)}


def _check_inputs(
    kind: str, clean: CleanBootstrap, pair_items: Items | None, n_sites: int, n_boot: int
) -> None:
    """Refuse a pair estimator without pairs, or clean resamples made for other sites or ``n_boot``."""
    if pair_items is None and _KINDS[kind][0] is not None:
        raise ValueError(f"estimator {kind!r} needs pairs")
    if clean.n_boot != n_boot or clean.n_sites != n_sites:
        raise ValueError("clean bootstrap does not match the estimator's sites or n_boot")


def _draw_pair_stats(
    pair_items: Items | None, pair_names: tuple[str, ...], idx: IntArray, rng: np.random.Generator | None
) -> _Stats:
    """Pair statistics of the drawn sites (``rng`` None: each site's items as they are), if any pairs."""
    if pair_items is None or not pair_names:
        return {}
    return _pair_stats(draw(pair_items, idx, rng, pair_names))


def _site_points(
    kind: str, c0: _Stats, p0: _Stats, sigma: Sigma, min_pairs: int, min_images: int
) -> tuple[FloatArray, list[str | None], np.ndarray, FloatArray]:
    """Per site: point value (NaN where undefined), why undefined, whether defined, and its item count."""
    feature, value_fn = _KINDS[kind]
    point = value_fn(c0, p0)[0]
    reasons = site_reasons(kind, c0, p0 if feature is not None else None, sigma, min_pairs, min_images)
    reasons = [
        r if r is not None or np.isfinite(v) else "undefined value"
        for r, v in zip(reasons, point, strict=True)
    ]
    defined = np.array([r is None for r in reasons], dtype=bool)
    point = np.where(defined, point, np.nan)
    counts = (p0[f"n_{feature}"] if feature is not None else c0["n"])[0]
    return point, reasons, defined, counts


def _site_bounds(
    value_fn: Callable[[_Stats, _Stats], FloatArray],
    cboot: _Stats,
    pair_stats: Callable[[IntArray, np.random.Generator | None], _Stats],
    rng: np.random.Generator,
    n_boot: int,
    width: int,
    n_sites: int,
    ci: float,
) -> tuple[FloatArray, FloatArray]:
    """Per-site percentile interval: pairs resampled within each site, next to the cached clean resamples."""
    ident = np.arange(n_sites)[None, :]
    parts, start = [], 0
    for b in chunk_sizes(n_boot, width * max(n_sites, 1)):
        c = {k: v[start : start + b] for k, v in cboot.items()}
        parts.append(value_fn(c, pair_stats(np.repeat(ident, b, axis=0), rng)))
        start += b
    return percentile_interval(np.concatenate(parts), ci)


def _population_bounds(
    value_fn: Callable[[_Stats, _Stats], FloatArray],
    clean_slots: Callable[[IntArray], _Stats],
    pair_stats: Callable[[IntArray, np.random.Generator | None], _Stats],
    sites: IntArray,
    rng: np.random.Generator,
    n_boot: int,
    width: int,
    ci: float,
) -> tuple[FloatArray, FloatArray]:
    """Population percentile interval: defined sites resampled, then each drawn site's items."""
    parts = []
    for b in chunk_sizes(n_boot, width * sites.size):
        idx = sites[rng.integers(0, sites.size, (b, sites.size))]
        c = clean_slots(idx)
        parts.append(finite_mean(value_fn(c, pair_stats(idx, rng)), axis=1))
    return percentile_interval(np.concatenate(parts), ci)


def _site_records(
    site_ids: tuple[Hashable, ...],
    point: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    defined: np.ndarray,
    counts: FloatArray,
    reasons: list[str | None],
    common: dict[str, Any],
) -> list[SensitivityEstimate]:
    """One row per site; an undefined site keeps its reason and gets no interval."""
    return [
        SensitivityEstimate(
            site_id=site_ids[i],
            value=float(point[i]),
            ci_low=float(lo[i]) if defined[i] else math.nan,
            ci_high=float(hi[i]) if defined[i] else math.nan,
            n_pairs=int(counts[i]),
            n_sites=int(defined[i]),
            undefined_reason=reasons[i],
            **common,
        )
        for i in range(len(site_ids))
    ]


def _undefined_population(common: dict[str, Any]) -> SensitivityEstimate:
    """The population row when no site has a defined value."""
    return SensitivityEstimate(
        None,
        value=math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        n_pairs=0,
        n_sites=0,
        undefined_reason="no site with a defined value",
        **common,
    )


def estimate(
    *,
    kind: str,
    label: str,
    clean: CleanBootstrap,
    pair_items: Items | None,
    site_ids: tuple[Hashable, ...],
    epsilon: float | None,
    sigma: Sigma,
    rng: np.random.Generator,
    n_boot: int,
    ci: float,
    min_pairs: int,
    min_images: int,
    day: Hashable | None,
    model: str | None = None,
    site_intervals: bool = True,
) -> list[SensitivityEstimate]:
    """Point estimates, per-site and population intervals for one estimator."""
    _check_inputs(kind, clean, pair_items, len(site_ids), n_boot)
    feature, value_fn = _KINDS[kind]
    pair_names = (feature,) if feature is not None else ()
    n_sites = len(site_ids)
    gmd = kind == "random_pair"
    uses_clean = _needs_clean(kind, sigma)

    def pair_stats(idx: IntArray, r: np.random.Generator | None) -> _Stats:
        return _draw_pair_stats(pair_items, pair_names, idx, r)

    c0 = clean.point(sigma, gmd) if uses_clean else _unit_sigma((1, n_sites))
    p0 = pair_stats(np.arange(n_sites)[None, :], None)
    point, reasons, defined, counts = _site_points(kind, c0, p0, sigma, min_pairs, min_images)

    width = pair_items.max_items * len(pair_names) if pair_items is not None else 1
    lo = hi = np.full(n_sites, np.nan)
    if site_intervals:
        cboot = clean.boot(sigma, gmd) if uses_clean else _unit_sigma((n_boot, n_sites))
        lo, hi = _site_bounds(value_fn, cboot, pair_stats, rng, n_boot, width, n_sites, ci)

    common: dict[str, Any] = {"epsilon": epsilon, "estimator": label, "day": day, "model": model}
    records = _site_records(site_ids, point, lo, hi, defined, counts, reasons, common)

    sites = np.flatnonzero(defined)
    if sites.size == 0:
        return [*records, _undefined_population(common)]

    def clean_slots(idx: IntArray) -> _Stats:
        return clean.slots(sigma, gmd, idx, rng) if uses_clean else _unit_sigma(idx.shape)

    plo, phi = _population_bounds(value_fn, clean_slots, pair_stats, sites, rng, n_boot, width, ci)
    population = SensitivityEstimate(
        site_id=None,
        value=float(point[sites].mean()),
        ci_low=float(plo),
        ci_high=float(phi),
        n_pairs=int(counts[sites].sum()),
        n_sites=int(sites.size),
        **common,
    )
    return [*records, population]


def align_clean(clean: CleanResponses, site_ids: tuple[Hashable, ...]) -> CleanResponses:
    """Clean responses in the row order of ``site_ids`` (missing sites all NaN)."""
    if clean.site_ids == site_ids:
        return clean
    pos = {s: k for k, s in enumerate(clean.site_ids)}
    trials = np.full((len(site_ids),) + clean.trials.shape[1:], np.nan)
    for k, s in enumerate(site_ids):
        if s in pos:
            trials[k] = clean.trials[pos[s]]
    return CleanResponses(site_ids, trials)
