"""Sensitivity estimators of DESIGN.md section 1, with hierarchical bootstrap intervals.

Per site ``i`` and pair ``j`` write ``d_ij = r_i(x_ij) - r_i(x_ij + delta_ij)`` for
the difference of trial-averaged responses and ``s_ij = sign(f_i(x_ij) -
f_i(x_ij + delta_ij))`` for the change the surrogate model predicted. Then, all
normalised by the site's spread ``sigma_i`` over clean images:

* ``plain``: ``mean_j |d_ij|``. Biased upward by trial noise: reads the noise
  floor even when ``delta = 0``.
* ``sign_corrected``: ``mean_j s_ij * d_ij``. Noise has mean zero, so this is
  unbiased for ``mean_j |true change|`` when the model gets the direction right,
  and lower when it does not (a lower bound, like every transferred measurement).
  Positive when the observed change goes the way the model predicted. Pairs with
  ``s_ij = 0`` (no predicted change) are left out.
* ``noise_floor``: what ``plain`` reads at ``delta = 0``. Split each clean image's
  repeats into random halves (h1, h2), take ``|mean_1 - mean_2| /
  sqrt(1/h1 + 1/h2)`` (the noise per unit of ``sqrt(1/n)``), average over splits
  and images, and multiply by ``mean_j sqrt(1/n_clean_ij + 1/n_perturbed_ij)``, the
  scale of the noise in ``d_ij`` at the repeat counts the pairs actually had.
* ``plain_noise_corrected``: ``sign(M) * sqrt(|M|)`` with ``M = mean_j (d_ij^2 -
  v_ij)``, where ``v_ij = s_c^2 / n_c + s_p^2 / n_p`` is the pair's own noise
  variance of ``d_ij`` from its trial variances. ``E[d^2] = Delta^2 + v`` and
  ``E[s^2] = var`` hold for any trial distribution, so ``M`` is unbiased for
  ``mean_j Delta_ij^2`` without assuming Gaussian or Poisson noise. Its root is
  the RMS change, which is ``>= mean_j |Delta_ij|`` and equal to it when a site's
  changes are of similar size, as they roughly are at one epsilon. The
  alternative, ``plain - noise_floor``, estimates the right quantity but is only
  exact at ``delta = 0``: for zero-mean noise ``e``, ``|Delta| <= E|Delta + e| <=
  |Delta| + E|e|``, so it undershoots by up to one floor when changes are
  comparable to the noise (the usual case): in the tests' simulation it reads
  about a third of the truth, the RMS form within about 10%. Both figures are stored, so
  that lower bound remains one subtraction away. The signed root (rather than a
  clip at 0) keeps the estimate centred near 0 when there is no change. The
  root of a noisy mean square is a few percent low (Jensen) with tens of pairs.
* ``random_pair``: ``E_{j != k} |r_i(x_j) - r_i(x_k)|`` over all ordered pairs of
  distinct clean images (exact, via sorting), the Gini mean difference. For a
  Gaussian spread of image means it equals ``2 / sqrt(pi) * sd = 1.128 sd``.

``sigma_i`` is the standard deviation (ddof=1) of the trial-averaged clean
responses, as in the paper (``sigma="plain"``). That spread includes trial
noise, so it overstates the spread of the true rates and deflates every
normalised figure a little; ``sigma="noise_corrected"`` subtracts the mean
variance of an image mean, ``sqrt(var_k(r_k) - mean_k(s_k^2 / n_k))``, which is
unbiased for the variance of the true rates over the images shown. ``"none"``
reports spike counts.

Intervals are percentile intervals of a hierarchical bootstrap: population
figures resample sites, then items (pairs, clean images) within each drawn
site; per-site figures resample items within the site. ``sigma_i`` is
re-estimated on each resample of the clean images, so its uncertainty is in
the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .bootstrap import Items, chunk_sizes, draw, finite_mean, pack, percentile_interval
from .data import CleanResponses, FloatArray, IntArray, ModelPredictions, PairedResponses, trial_means

__all__ = [
    "ESTIMATORS",
    "SensitivityEstimate",
    "as_generator",
    "model_sensitivity",
    "pair_sensitivity",
    "random_pair_baseline",
    "site_sigma",
    "to_records",
]

Sigma = Literal["plain", "noise_corrected", "none"]
PairSet = Literal["guided", "random", "all"]
PairEstimator = Literal["plain", "sign_corrected", "plain_noise_corrected", "noise_floor"]

ESTIMATORS = (
    "plain",
    "sign_corrected",
    "plain_noise_corrected",
    "noise_floor",
    "random_pair",
    "model_free_plain",
    "model_free_sign_corrected",
    "model",
)

_Stats = dict[str, FloatArray]

#: Relative spread below which a site's clean responses count as constant.
_CONST_RTOL = 1e-9


@dataclass(frozen=True)
class SensitivityEstimate:
    """One figure: a site (or the population) at one epsilon, by one estimator.

    Attributes
    ----------
    site_id : hashable or None
        None for the population mean over sites.
    epsilon : float or None
        None for figures that do not depend on epsilon (``random_pair``).
    estimator : str
        One of :data:`ESTIMATORS`.
    value, ci_low, ci_high : float
        Estimate and percentile bootstrap interval; NaN when undefined.
    n_pairs : int
        Items behind the figure: pairs, or clean images for ``random_pair``;
        summed over the sites used for a population figure.
    n_sites : int
        Sites behind the figure (0 or 1 for a site, defined sites for the population).
    undefined_reason : str or None
        Why ``value`` is NaN; None when it is defined.
    day : hashable or None
        The day (session) it belongs to; ``"pooled"`` for pooled days.
    model : str or None
        Model version for ``estimator == "model"``.
    """

    site_id: Hashable | None
    epsilon: float | None
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n_pairs: int
    n_sites: int
    undefined_reason: str | None = None
    day: Hashable | None = None
    model: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Plain dict for a database row: NaN becomes None, numpy scalars become Python ones."""
        rec = asdict(self)
        for k, v in rec.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            rec[k] = v
        return rec


def to_records(estimates: Iterable[SensitivityEstimate]) -> list[dict[str, Any]]:
    """Rows to store, one per site (or population), epsilon, day and estimator."""
    return [e.to_record() for e in estimates]


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Accept a Generator, a seed, or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


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


def _clean_items(clean: CleanResponses, rng: np.random.Generator, n_splits: int) -> Items:
    """Features per clean image: mean, variance of the mean (trial noise), split-half noise unit."""
    trials = clean.trials
    means, n = trial_means(trials)
    s2 = _trial_variance(trials, means, n)
    s2 = np.where(n >= 2, s2, finite_mean(s2, axis=1)[:, None])  # one-repeat images borrow the site's mean
    noise = np.divide(s2, n, out=np.full(n.shape, np.nan), where=n > 0)
    unit = _split_unit(trials, n, rng, n_splits)
    return pack({"mean": means, "noise": noise, "unit": unit}, n > 0)


def _pair_items(pairs: PairedResponses, which: PairSet) -> Items:
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


def _clean_stats(x: dict[str, FloatArray], sigma: Sigma, need_gmd: bool) -> _Stats:
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


def _reasons(
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
        From :func:`_clean_items`.
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
            self._point[key] = _clean_stats(draw(self.items, ident, None, self._names(sigma)), sigma, gmd)
        return self._point[key]

    def boot(self, sigma: Sigma, gmd: bool = False) -> _Stats:
        """Resampled statistics, arrays of shape (n_boot, n_sites)."""
        key = f"{sigma}/{gmd}"
        if key not in self._boot:
            names = self._names(sigma)
            ident = np.arange(self.n_sites)[None, :]
            width = self.items.max_items * len(names) * max(self.n_sites, 1)
            parts = [
                _clean_stats(draw(self.items, np.repeat(ident, b, axis=0), self.rng, names), sigma, gmd)
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


def _estimate(
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
    feature, value_fn = _KINDS[kind]
    if pair_items is None and feature is not None:
        raise ValueError(f"estimator {kind!r} needs pairs")
    if clean.n_boot != n_boot or clean.n_sites != len(site_ids):
        raise ValueError("clean bootstrap does not match the estimator's sites or n_boot")
    pair_names = (feature,) if feature is not None else ()
    n_sites = len(site_ids)
    gmd = kind == "random_pair"
    uses_clean = _needs_clean(kind, sigma)

    def pair_stats(idx: IntArray, r: np.random.Generator | None) -> _Stats:
        return (
            _pair_stats(draw(pair_items, idx, r, pair_names)) if pair_items is not None and pair_names else {}
        )

    ident = np.arange(n_sites)[None, :]
    c0 = clean.point(sigma, gmd) if uses_clean else _unit_sigma((1, n_sites))
    p0 = pair_stats(ident, None)
    point = value_fn(c0, p0)[0]
    reasons = _reasons(kind, c0, p0 if feature is not None else None, sigma, min_pairs, min_images)
    reasons = [
        r if r is not None or np.isfinite(v) else "undefined value"
        for r, v in zip(reasons, point, strict=True)
    ]
    defined = np.array([r is None for r in reasons], dtype=bool)
    point = np.where(defined, point, np.nan)
    counts = (p0[f"n_{feature}"] if feature is not None else c0["n"])[0]

    width = pair_items.max_items * len(pair_names) if pair_items is not None else 1
    lo = hi = np.full(n_sites, np.nan)
    if site_intervals:
        cboot = clean.boot(sigma, gmd) if uses_clean else _unit_sigma((n_boot, n_sites))
        parts, start = [], 0
        for b in chunk_sizes(n_boot, width * max(n_sites, 1)):
            c = {k: v[start : start + b] for k, v in cboot.items()}
            parts.append(value_fn(c, pair_stats(np.repeat(ident, b, axis=0), rng)))
            start += b
        lo, hi = percentile_interval(np.concatenate(parts), ci)

    common: dict[str, Any] = {"epsilon": epsilon, "estimator": label, "day": day, "model": model}
    records = [
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
        for i in range(n_sites)
    ]

    sites = np.flatnonzero(defined)
    if sites.size == 0:
        records.append(
            SensitivityEstimate(
                None,
                value=math.nan,
                ci_low=math.nan,
                ci_high=math.nan,
                n_pairs=0,
                n_sites=0,
                undefined_reason="no site with a defined value",
                **common,
            )
        )
        return records
    parts = []
    for b in chunk_sizes(n_boot, width * sites.size):
        idx = sites[rng.integers(0, sites.size, (b, sites.size))]
        c = clean.slots(sigma, gmd, idx, rng) if uses_clean else _unit_sigma(idx.shape)
        parts.append(finite_mean(value_fn(c, pair_stats(idx, rng)), axis=1))
    pop_boot = np.concatenate(parts)
    plo, phi = percentile_interval(pop_boot, ci)
    records.append(
        SensitivityEstimate(
            site_id=None,
            value=float(point[sites].mean()),
            ci_low=float(plo),
            ci_high=float(phi),
            n_pairs=int(counts[sites].sum()),
            n_sites=int(sites.size),
            **common,
        )
    )
    return records


# ---------------------------------------------------------------- public estimators


def site_sigma(clean: CleanResponses, *, sigma: Sigma = "plain") -> tuple[FloatArray, list[str | None]]:
    """Each site's spread over clean images, and why it is undefined where it is.

    Returns
    -------
    sigma : ndarray of shape (n_sites,)
        NaN where undefined (fewer than two images, or a non-positive noise-corrected variance).
    reasons : list of str or None, length n_sites
    """
    items = _clean_items(clean, np.random.default_rng(0), 1)
    c = _clean_stats(draw(items, np.arange(clean.n_sites)[None], None, items.names), sigma, False)
    reasons = _reasons("sigma", c, None, sigma, 0, 2)
    sd = np.where([r is None for r in reasons], c["sigma"][0], np.nan)
    return sd, reasons


def pair_sensitivity(
    pairs: PairedResponses,
    clean: CleanResponses,
    *,
    estimator: PairEstimator = "sign_corrected",
    pair_set: PairSet = "guided",
    sigma: Sigma = "plain",
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_pairs: int = 2,
    min_images: int = 3,
    n_splits: int = 16,
    day: Hashable | None = None,
    site_intervals: bool = True,
) -> list[SensitivityEstimate]:
    """Sensitivity of every site and of the population at one epsilon.

    Parameters
    ----------
    pairs : PairedResponses
    clean : CleanResponses
        Same sites (matched by id; sites absent from ``clean`` are undefined).
    estimator : {"plain", "sign_corrected", "plain_noise_corrected", "noise_floor"}
    pair_set : {"guided", "random", "all"}
        Which pairs to use by their ``random_direction`` flag. ``"random"``
        labels the result ``model_free_<estimator>``.
    sigma : {"plain", "noise_corrected", "none"}
        Normaliser, see the module docstring.
    n_boot, ci : bootstrap resamples and interval coverage.
    rng : Generator or seed
    min_pairs, min_images : fewer usable pairs or clean images leave a site undefined.
    n_splits : random repeat splits per image for the noise floor.
    site_intervals : bool
        False skips the per-site bootstrap (their intervals are NaN), halving the cost.

    Returns
    -------
    list of SensitivityEstimate
        One per site (in ``pairs.site_ids`` order), then the population.
    """
    g = as_generator(rng)
    clean = _align_clean(clean, pairs.site_ids)
    label = f"model_free_{estimator}" if pair_set == "random" else estimator
    return _estimate(
        kind=estimator,
        label=label,
        clean=CleanBootstrap(_clean_items(clean, g, n_splits), g, n_boot),
        pair_items=_pair_items(pairs, pair_set),
        site_ids=pairs.site_ids,
        epsilon=pairs.epsilon,
        sigma=sigma,
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=min_pairs,
        min_images=min_images,
        day=day,
        site_intervals=site_intervals,
    )


def random_pair_baseline(
    clean: CleanResponses,
    *,
    sigma: Sigma = "plain",
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_images: int = 3,
    day: Hashable | None = None,
) -> list[SensitivityEstimate]:
    """``E_{j != k} |r_i(x_j) - r_i(x_k)| / sigma_i`` over clean images, per site and population.

    The yardstick for a sensitivity: near it, an epsilon perturbation moves the
    site as much as swapping the image for an unrelated one.
    """
    g = as_generator(rng)
    return _estimate(
        kind="random_pair",
        label="random_pair",
        clean=CleanBootstrap(_clean_items(clean, g, 1), g, n_boot),
        pair_items=None,
        site_ids=clean.site_ids,
        epsilon=None,
        sigma=sigma,
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=0,
        min_images=max(min_images, 2),
        day=day,
    )


def model_sensitivity(
    model: ModelPredictions,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_pairs: int = 2,
    min_images: int = 3,
    day: Hashable | None = None,
) -> list[SensitivityEstimate]:
    """``mean_j |f_i(x_j) - f_i(x_j + delta_j)| / sd_k f_i(x_k)``: the plain formula on noise-free f_i.

    Without noise the plain and sign-corrected estimators agree, and there is
    no noise floor. Labelled ``estimator="model"`` with ``model=model.name``.
    """
    g = as_generator(rng)
    pairs, clean = model.as_responses()
    return _estimate(
        kind="plain",
        label="model",
        clean=CleanBootstrap(_clean_items(clean, g, 1), g, n_boot),
        pair_items=_pair_items(pairs, "all"),
        site_ids=pairs.site_ids,
        epsilon=model.epsilon,
        sigma="plain",
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=min_pairs,
        min_images=min_images,
        day=day,
        model=model.name,
    )


def _align_clean(clean: CleanResponses, site_ids: tuple[Hashable, ...]) -> CleanResponses:
    """Clean responses in the row order of ``site_ids`` (missing sites all NaN)."""
    if clean.site_ids == site_ids:
        return clean
    pos = {s: k for k, s in enumerate(clean.site_ids)}
    trials = np.full((len(site_ids),) + clean.trials.shape[1:], np.nan)
    for k, s in enumerate(site_ids):
        if s in pos:
            trials[k] = clean.trials[pos[s]]
    return CleanResponses(site_ids, trials)
