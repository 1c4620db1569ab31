"""Measured transfer: how well a surrogate's predicted changes match what the brain did.

Every twin already shown is a held-out test of every candidate surrogate: for the pair (parent,
twin) the candidate predicts a change at each site, and the recording measured one. A surrogate
whose predictions track the measured changes at a site has an input gradient that points where
that site's does, and only such a surrogate makes twins that move the site. Predictivity on clean
images does not tell this (a surrogate can predict clean responses well from directions the
brain barely uses), so the loop chooses each site's surrogate by these statistics once twins
exist, and by predictivity only before.

All functions are pure NumPy: arrays of shape (n_pairs, n_sites) in, per-site statistics out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SiteTransfer",
    "implausible_predictions",
    "own_twin_effect",
    "shrink_to_population",
    "site_transfer",
]

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class SiteTransfer:
    """Per-site agreement between predicted and observed changes over the twins shown so far.

    Attributes
    ----------
    n : ndarray of shape (n_sites,)
        Pairs with a finite prediction and observation.
    r, r_low, r_high : ndarray of shape (n_sites,)
        Pearson correlation of predicted with observed change and its 95% CI (Fisher z). Chance
        is 0; NaN below 4 pairs.
    slope : ndarray of shape (n_sites,)
        Observed change per unit of predicted change (least squares through the origin): how much
        of a predicted move the brain delivers. 1 is a perfectly calibrated surrogate.
    sign_agreement, sign_low, sign_high : ndarray of shape (n_sites,)
        Share of pairs where predicted and observed change agree in sign, with a 95% Wilson CI.
        Chance is 0.5.
    """

    n: np.ndarray
    r: np.ndarray
    r_low: np.ndarray
    r_high: np.ndarray
    slope: np.ndarray
    sign_agreement: np.ndarray
    sign_low: np.ndarray
    sign_high: np.ndarray

    chance_r: float = 0.0
    chance_sign: float = 0.5


def _wilson(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + _Z95**2 / n
        centre = (p + _Z95**2 / (2 * n)) / denom
        half = _Z95 * np.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def site_transfer(predicted: np.ndarray, observed: np.ndarray) -> SiteTransfer:
    """Transfer statistics per site.

    Parameters
    ----------
    predicted, observed : ndarray of shape (n_pairs, n_sites)
        Predicted and observed change (twin minus parent) of every site for every pair; NaN where
        a pair was not recorded at a site.

    Returns
    -------
    SiteTransfer
    """
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    if p.shape != o.shape or p.ndim != 2:
        raise ValueError(f"predicted and observed must share a 2-D shape; got {p.shape} and {o.shape}")
    ok = np.isfinite(p) & np.isfinite(o)
    n = ok.sum(axis=0)
    pz, oz = np.where(ok, p, 0.0), np.where(ok, o, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pm, om = pz.sum(0) / n, oz.sum(0) / n
        pc, oc = np.where(ok, p - pm, 0.0), np.where(ok, o - om, 0.0)
        r = (pc * oc).sum(0) / np.sqrt((pc**2).sum(0) * (oc**2).sum(0))
        r = np.where(n >= 4, np.clip(r, -1.0, 1.0), np.nan)
        z = np.arctanh(np.clip(r, -0.999999, 0.999999))
        half = _Z95 / np.sqrt(np.maximum(n - 3, 1))
        r_low, r_high = np.tanh(z - half), np.tanh(z + half)
        slope = (pz * oz).sum(0) / (pz**2).sum(0)
        slope = np.where(n >= 1, slope, np.nan)
        agree = ((np.sign(pz) == np.sign(oz)) & ok & (pz != 0)).sum(0).astype(np.float64)
        sign = np.where(n >= 1, agree / n, np.nan)
    s_low, s_high = _wilson(agree, n.astype(np.float64))
    return SiteTransfer(
        n=n,
        r=r,
        r_low=np.where(np.isfinite(r), r_low, np.nan),
        r_high=np.where(np.isfinite(r), r_high, np.nan),
        slope=slope,
        sign_agreement=sign,
        sign_low=np.where(n >= 1, s_low, np.nan),
        sign_high=np.where(n >= 1, s_high, np.nan),
    )


def implausible_predictions(predicted: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Which predicted responses lie far outside a site's observed range.

    A prediction more than one observed range beyond either end of ``[low, high]`` is an
    extrapolation the data cannot support: the surrogate's output there says nothing about the
    brain (a linear readout on a steep feature can promise hundreds of spikes/s). Flagged twins
    are still shipped, because the measurement is what tells; the flag tells the reader.

    Parameters
    ----------
    predicted : ndarray of shape (n,) or (n, n_sites)
    low, high : ndarray broadcastable to ``predicted``
        Smallest and largest observed (repeat-averaged) response of the site.

    Returns
    -------
    ndarray of bool, same shape as ``predicted``
    """
    span = np.maximum(np.asarray(high) - np.asarray(low), 1e-9)
    pred = np.asarray(predicted)
    return (pred > np.asarray(high) + span) | (pred < np.asarray(low) - span)


def own_twin_effect(
    observed: np.ndarray, l2: np.ndarray, direction: np.ndarray, target: np.ndarray, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How much one source's own twins moved the sites they were made for, per unit L2.

    This is the direct measurement of what the choice of a source is for: its twins for a site,
    shown and recorded, and the observed change in the direction they were made to push
    (up +1, down -1), per unit of their L2 distance (so epsilons pool). The effect is the
    least-squares slope of the sign-corrected change on the distance, through the origin: the
    recording noise of a pair's change does not depend on its distance, so a twin at epsilon 2
    measures the slope four times as precisely as one at 0.5; the mean of per-pair ratios would
    weight them equally and, at the demo's epsilons 0.5/1/2, have 3x the variance (the noise that
    made a working source look null at single sites and sent them exploring). Evaluating a source on
    probes other sources chose measures its predictions along *their* directions, not the
    direction its own attack takes, and on the virtual brains that picked sources whose twins
    did not move the site.

    Parameters
    ----------
    observed : ndarray of shape (n_pairs, n_sites)
        Observed change (twin minus parent) of every site for every pair.
    l2 : ndarray of shape (n_pairs,)
    direction : ndarray of shape (n_pairs,)
        +1 or -1 for twins made to push up or down; 0 for others (never counted).
    target : ndarray of shape (n_pairs,)
        Column of the site each twin was made for (-1: none).
    own : ndarray of bool, shape (n_pairs,)
        Twins this source made.

    Returns
    -------
    effect, stderr : ndarray of shape (n_sites,)
        Sign-corrected change per unit L2 of the source's own twins for each site (the slope
        through the origin), and its standard error (NaN below 2 twins).
    n : ndarray of shape (n_sites,)
    """
    o = np.asarray(observed, dtype=np.float64)
    n_sites = o.shape[1]
    dist, sign = np.asarray(l2, dtype=np.float64), np.asarray(direction, dtype=np.float64)
    tgt, mine = np.asarray(target), np.asarray(own, dtype=bool)
    effect, stderr, n = np.full(n_sites, np.nan), np.full(n_sites, np.nan), np.zeros(n_sites, dtype=int)
    for i in range(n_sites):
        rows = mine & (tgt == i) & (sign != 0) & (dist > 0) & np.isfinite(o[:, i]) & np.isfinite(dist)
        k = int(rows.sum())
        if k < 2:
            continue
        y, x = sign[rows] * o[rows, i], dist[rows]
        sxx = float(np.sum(x * x))
        slope = float(np.sum(x * y)) / sxx
        resid = y - slope * x
        effect[i], stderr[i], n[i] = slope, np.sqrt(float(np.sum(resid**2)) / (k - 1) / sxx), k
    return effect, stderr, n


def shrink_to_population(effect: np.ndarray, stderr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-site effects pulled toward the source's population mean (empirical Bayes, normal-normal).

    One day of a site's own twins is a noisy measurement: a source that moves most sites by a
    clear margin can look null at a single site by chance, and switching that site to an untried
    source costs a day of twins. The sites share a source, so its population mean and the
    between-site spread (method of moments) form the prior, and each site's estimate is the
    precision-weighted combination: a site departs from the population only as far as its own
    data can show.

    Parameters
    ----------
    effect, stderr : ndarray of shape (n_sites,)
        NaN where the source has no own twins at a site.

    Returns
    -------
    mean, sd : ndarray of shape (n_sites,)
        Posterior mean and standard deviation per site; NaN where ``effect`` is NaN.
    """
    e, se = np.asarray(effect, dtype=np.float64), np.asarray(stderr, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(se) & (se > 0)
    if ok.sum() < 3:
        return e.copy(), se.copy()
    w = 1.0 / se[ok] ** 2
    mu = float(np.sum(w * e[ok]) / np.sum(w))
    tau2 = max(float(np.var(e[ok], ddof=1) - np.mean(se[ok] ** 2)), 1e-12)
    post_var = 1.0 / (1.0 / se**2 + 1.0 / tau2)
    mean = np.where(ok, post_var * (e / se**2 + mu / tau2), np.nan)
    return mean, np.where(ok, np.sqrt(post_var), np.nan)
