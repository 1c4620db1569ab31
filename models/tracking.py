"""Continuity of chronically recorded sites across days.

Every batch repeats a fixed reference set of clean images. If a site's responses to that set move
beyond what trial noise explains, the electrode may now record different neurons, and the site's
history (models, sensitivity estimates) must not be pooled across the change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

_MIN_IMAGES = 4


@dataclass
class DriftReport:
    """Per-site drift test of today's reference responses against a baseline.

    Attributes
    ----------
    flagged : ndarray of bool, shape (n_sites,)
        True when continuity is rejected (or could not be tested).
    statistic : ndarray of shape (n_sites,)
        Chi-square statistic of the per-image mean differences in noise units.
    dof : ndarray of shape (n_sites,)
        Images that entered the test.
    p_value : ndarray of shape (n_sites,)
    tuning_r : ndarray of shape (n_sites,)
        Correlation of today's and baseline mean responses across reference images.
    expected_r : ndarray of shape (n_sites,)
        Correlation expected from noise alone if the site is unchanged: ``sqrt(rel_today * rel_base)``.
    reasons : list of str
        One human-readable reason per site ("stable" when not flagged).
    """

    flagged: np.ndarray
    statistic: np.ndarray
    dof: np.ndarray
    p_value: np.ndarray
    tuning_r: np.ndarray
    expected_r: np.ndarray
    reasons: list[str]


def _mean_se(rep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeat means and their standard errors from a pooled per-site noise variance.

    Pooling the trial variance over images (instead of one variance per image) matters with the
    few repeats a reference image gets per day: per-image variances from 3-5 trials are so noisy
    that dividing by them inflates the chi-square statistic and flags stable sites.
    """
    R = np.asarray(rep, dtype=np.float64)
    if R.ndim != 3:
        raise ValueError(f"reference responses must be (n_images, n_sites, n_repeats), got {R.shape}")
    n = np.isfinite(R).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(R, axis=2) / n
        ss = np.nansum((R - mean[..., None]) ** 2, axis=2)  # (images, sites)
        df = np.clip(n - 1, 0, None)
        pooled = ss.sum(0) / df.sum(0)  # (sites,)
        se = np.sqrt(pooled[None, :] / n)
    mean[n == 0] = np.nan
    se[n == 0] = np.nan
    return mean, se


def _reliability(mean: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Reliability of mean responses across images: 1 - noise variance / total variance, in [0, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = 1.0 - np.nanmean(se**2, axis=0) / np.nanvar(mean, axis=0, ddof=1)
    return np.clip(rel, 0.0, 1.0)


def detect_drift(
    ref_today: np.ndarray,
    ref_baseline: np.ndarray | tuple[np.ndarray, np.ndarray],
    alpha: float = 0.01,
) -> DriftReport:
    """Flag sites whose reference-set responses changed beyond trial noise.

    Two tests per site, each Bonferroni-corrected over sites at level ``alpha``:

    * level: ``sum_j (m_today_j - m_base_j)^2 / (se_today_j^2 + se_base_j^2)`` is chi-square with one
      degree of freedom per reference image if nothing changed; it catches gain or offset shifts as
      well as tuning changes.
    * tuning: the correlation of today's and baseline means is compared (Fisher z, one-sided) with
      the correlation that noise alone would leave, ``sqrt(rel_today * rel_base)``; a lower value means
      the site now prefers different images.

    Parameters
    ----------
    ref_today : ndarray of shape (n_ref_images, n_sites, n_repeats)
        Single-trial responses to the reference set; NaN marks a missing repeat.
    ref_baseline : ndarray of the same layout, or (mean, se) ndarrays of shape (n_ref_images, n_sites)
        The baseline day's trials, or its repeat means with their standard errors.
    alpha : float, default 0.01
        Family-wise false-alarm rate over sites, per test.

    Returns
    -------
    DriftReport
    """
    m_t, se_t = _mean_se(ref_today)
    m_b, se_b = _baseline_mean_se(ref_baseline, m_t.shape)
    n_sites = m_t.shape[1]
    level = alpha / max(n_sites, 1)
    ok, chi2, dof, p = _level_test(m_t, se_t, m_b, se_b)
    tuning_r, expected_r = _tuning_correlations(m_t, se_t, m_b, se_b, ok)
    z_crit = stats.norm.isf(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = np.tanh(
            np.arctanh(np.clip(expected_r, 0.0, 0.999999)) - z_crit / np.sqrt(np.maximum(dof - 3, 1))
        )
    flagged, reasons = _verdicts(chi2, dof, p, tuning_r, expected_r, bound, level)
    return DriftReport(
        flagged=flagged,
        statistic=chi2,
        dof=dof,
        p_value=p,
        tuning_r=tuning_r,
        expected_r=expected_r,
        reasons=reasons,
    )


def _baseline_mean_se(
    ref_baseline: np.ndarray | tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline means and standard errors, from its trials or as given; their shape must be today's."""
    if isinstance(ref_baseline, tuple):
        m_b, se_b = (np.asarray(a, dtype=np.float64) for a in ref_baseline)
    else:
        m_b, se_b = _mean_se(ref_baseline)
    if m_b.shape != shape or se_b.shape != shape:
        raise ValueError(f"baseline shape {m_b.shape} does not match today's {shape}")
    return m_b, se_b


def _level_test(
    m_t: np.ndarray, se_t: np.ndarray, m_b: np.ndarray, se_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images usable on both days, and per site the chi-square statistic, its dof and p-value."""
    var = se_t**2 + se_b**2
    ok = np.isfinite(m_t) & np.isfinite(m_b) & np.isfinite(var) & (var > 0)
    z2 = np.where(ok, (m_t - m_b) ** 2 / np.where(ok, var, 1.0), 0.0)
    chi2 = z2.sum(axis=0)
    dof = ok.sum(axis=0)
    p = np.where(dof > 0, stats.chi2.sf(chi2, np.maximum(dof, 1)), np.nan)
    return ok, chi2, dof, p


def _tuning_correlations(
    m_t: np.ndarray, se_t: np.ndarray, m_b: np.ndarray, se_b: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per site: today's vs baseline correlation over usable images, and what noise alone would leave."""
    n_sites = m_t.shape[1]
    tuning_r = np.full(n_sites, np.nan)
    expected_r = np.full(n_sites, np.nan)
    for s in range(n_sites):
        rows = ok[:, s]
        if rows.sum() >= _MIN_IMAGES:
            a, b = m_t[rows, s], m_b[rows, s]
            if a.std() > 0 and b.std() > 0:
                tuning_r[s] = float(np.corrcoef(a, b)[0, 1])
            rel_t = _reliability(m_t[rows, s : s + 1], se_t[rows, s : s + 1])[0]
            rel_b = _reliability(m_b[rows, s : s + 1], se_b[rows, s : s + 1])[0]
            expected_r[s] = float(np.sqrt(rel_t * rel_b))
    return tuning_r, expected_r


def _verdicts(
    chi2: np.ndarray,
    dof: np.ndarray,
    p: np.ndarray,
    tuning_r: np.ndarray,
    expected_r: np.ndarray,
    bound: np.ndarray,
    level: float,
) -> tuple[np.ndarray, list[str]]:
    """Per site: flagged or not, and why (untestable, level change, tuning change, or "stable")."""
    n_sites = len(dof)
    flagged = np.zeros(n_sites, dtype=bool)
    reasons: list[str] = []
    for s in range(n_sites):
        if dof[s] < _MIN_IMAGES:
            flagged[s] = True
            reasons.append(
                f"untestable: {dof[s]} reference images with responses on both days (< {_MIN_IMAGES})"
            )
            continue
        why = []
        if p[s] < level:
            why.append(f"responses changed beyond noise (chi2={chi2[s]:.1f}, dof={dof[s]}, p={p[s]:.2g})")
        if np.isfinite(expected_r[s]) and expected_r[s] > 0 and not tuning_r[s] >= bound[s]:
            why.append(f"tuning correlation {tuning_r[s]:.2f} below noise bound {bound[s]:.2f}")
        flagged[s] = bool(why)
        reasons.append("; ".join(why) if why else "stable")
    return flagged, reasons


def quality_gate(ceiling: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """Decide which sites are reliable enough to receive perturbations tonight.

    A site whose noise ceiling is below ``threshold`` cannot resolve a perturbation's effect from
    trial noise, so spending images on it wastes rig time.

    Parameters
    ----------
    ceiling : ndarray of shape (n_sites,)
        Split-half reliability (see :func:`models.screening.split_half_reliability`).
    threshold : float, default 0.5

    Returns
    -------
    passed : ndarray of bool, shape (n_sites,)
    reasons : list of str
        Why each site passed or failed.
    """
    c = np.asarray(ceiling, dtype=np.float64).ravel()
    passed = np.isfinite(c) & (c >= threshold)
    reasons = []
    for v in c:
        if not np.isfinite(v):
            reasons.append("no reliability estimate (too few repeats)")
        elif v >= threshold:
            reasons.append(f"reliability {v:.2f} >= {threshold:.2f}")
        else:
            reasons.append(f"reliability {v:.2f} below threshold {threshold:.2f}")
    return passed, reasons
