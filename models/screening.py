"""Screening metrics for candidate site models.

Conventions
-----------
Noise ceiling
    ``split_half_reliability`` returns, per site, the Spearman-Brown corrected split-half
    correlation of the repeat-averaged responses: an estimate of ``rho``, the correlation of the
    site's mean response with a hypothetical independent replicate of itself. For signal variance
    ``var_s`` and trial-noise variance ``var_n`` averaged over ``n`` repeats,
    ``rho = var_s / (var_s + var_n / n)``.
Ceiled predictivity
    A noise-free model can correlate with the noisy mean responses at most ``sqrt(rho)`` (Spearman's
    correction for attenuation with a perfectly reliable predictor), so the ceiled predictivity is
    ``r / sqrt(rho)``: 1 means "as good as the data allow". Only the neural side is corrected, as in
    Brain-Score's neural predictivity. Some benchmarks divide by ``rho`` itself, which is stricter;
    compare numbers only within one convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-12


def _as2d(a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    return arr[:, None] if arr.ndim == 1 else arr


def pearson_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns, ignoring rows where either value is NaN.

    Parameters
    ----------
    a, b : ndarray of shape (n_images, n_sites)

    Returns
    -------
    ndarray of shape (n_sites,)
        NaN where a column has fewer than 3 complete rows or no variance.
    """
    x, y = _as2d(a), _as2d(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(axis=0)
    x = np.where(ok, x, 0.0)
    y = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = x.sum(0) / n
        my = y.sum(0) / n
        dx = np.where(ok, x - mx, 0.0)
        dy = np.where(ok, y - my, 0.0)
        cov = (dx * dy).sum(0)
        var = (dx * dx).sum(0) * (dy * dy).sum(0)
        r = cov / np.sqrt(var)
    r[(n < 3) | ~(var > _EPS * _EPS)] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """Reliability of a ``factor``-times longer measurement from the reliability ``r`` of one part."""
    r = np.asarray(r, dtype=np.float64)
    return factor * r / (1.0 + (factor - 1.0) * r)


def split_half_reliability(rep_responses: np.ndarray, n_splits: int = 100, seed: int = 0) -> np.ndarray:
    """Spearman-Brown corrected split-half noise ceiling per site.

    Each split assigns every (image, site)'s available repeats at random to two equal halves
    (an odd repeat out is left out), correlates the half means across images, and the split-half
    correlations are averaged over ``n_splits`` random splits before the Spearman-Brown step
    (averaging first keeps the nonlinear correction from amplifying split noise).

    Parameters
    ----------
    rep_responses : ndarray of shape (n_images, n_sites, n_repeats)
        Single-trial responses; NaN marks a missing repeat. Images with fewer than 2 repeats of a
        site are ignored for that site.
    n_splits : int, default 100
    seed : int, default 0

    Returns
    -------
    ndarray of shape (n_sites,)
        Reliability of the full repeat average (see module notes); NaN where it cannot be estimated.
    """
    R = np.asarray(rep_responses, dtype=np.float64)
    if R.ndim != 3:
        raise ValueError(f"rep_responses must be (n_images, n_sites, n_repeats), got shape {R.shape}")
    rng = np.random.default_rng(seed)
    valid = np.isfinite(R)
    n_valid = valid.sum(axis=2)
    half = n_valid // 2  # (n_images, n_sites)
    filled = np.where(valid, R, 0.0)
    r_sum = np.zeros(R.shape[1])
    r_cnt = np.zeros(R.shape[1])
    for _ in range(n_splits):
        keys = rng.random(R.shape)
        keys[~valid] = np.inf  # missing repeats sort last
        order = np.argsort(keys, axis=2)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(R.shape[2]), R.shape), axis=2)
        in_a = rank < half[..., None]
        in_b = (rank >= half[..., None]) & (rank < 2 * half[..., None])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_a = (filled * in_a).sum(2) / half
            mean_b = (filled * in_b).sum(2) / half
        mean_a[half < 1] = np.nan
        mean_b[half < 1] = np.nan
        r = pearson_per_column(mean_a, mean_b)
        ok = np.isfinite(r)
        r_sum[ok] += r[ok]
        r_cnt[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        r_half = r_sum / r_cnt
    return spearman_brown(r_half)


def predictivity(pred: np.ndarray, obs: np.ndarray, ceiling: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw and noise-ceiled predictivity per site.

    Parameters
    ----------
    pred : ndarray of shape (n_images, n_sites)
        Cross-validated (out-of-sample) predictions.
    obs : ndarray of shape (n_images, n_sites)
        Repeat-averaged responses.
    ceiling : ndarray of shape (n_sites,)
        From :func:`split_half_reliability`.

    Returns
    -------
    r : ndarray of shape (n_sites,)
        Pearson correlation of predictions and observations.
    r_ceiled : ndarray of shape (n_sites,)
        ``r / sqrt(ceiling)`` (see module notes); NaN where the ceiling is not positive.
    """
    r = pearson_per_column(pred, obs)
    c = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ceiled = np.where(c > 0, r / np.sqrt(np.where(c > 0, c, 1.0)), np.nan)
    return r, ceiled


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same images.

    Invariant to orthogonal transforms and isotropic scaling of either side; 1 for identical
    representations. Uses the feature form ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` or the
    equivalent Gram form, whichever is cheaper.

    Parameters
    ----------
    X : ndarray of shape (n_images, n_features_x)
    Y : ndarray of shape (n_images, n_features_y)
    """
    x = _as2d(X)
    y = _as2d(Y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must describe the same images: {x.shape[0]} vs {y.shape[0]} rows")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("linear_cka needs finite values")
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = x.shape[0]
    if x.shape[1] + y.shape[1] <= 2 * n:
        hsic_xy = float(np.linalg.norm(y.T @ x) ** 2)
        hsic_xx = float(np.linalg.norm(x.T @ x))
        hsic_yy = float(np.linalg.norm(y.T @ y))
    else:
        kx, ky = x @ x.T, y @ y.T
        hsic_xy = float(np.sum(kx * ky))
        hsic_xx = float(np.linalg.norm(kx))
        hsic_yy = float(np.linalg.norm(ky))
    denom = hsic_xx * hsic_yy
    return float(hsic_xy / denom) if denom > 0 else float("nan")


@dataclass
class TransferResult:
    """How well a model predicts the observed effect of perturbations, per site.

    Attributes
    ----------
    sign_agreement : ndarray of shape (n_sites,)
        Fraction of perturbed pairs where predicted and observed changes have the same sign
        (pairs with a zero or missing change are skipped). Chance is 0.5.
    r : ndarray of shape (n_sites,)
        Pearson correlation of predicted and observed changes (sign and size).
    n_pairs : ndarray of shape (n_sites,)
        Pairs that entered ``sign_agreement``.
    """

    sign_agreement: np.ndarray
    r: np.ndarray
    n_pairs: np.ndarray


def perturbation_transfer(
    pred_clean: np.ndarray, pred_pert: np.ndarray, obs_clean: np.ndarray, obs_pert: np.ndarray
) -> TransferResult:
    """Compare predicted and observed response changes on perturbed image pairs.

    All inputs are ndarrays of shape (n_pairs, n_sites); row ``j`` holds a clean image and its
    perturbed version. NaN marks a site not measured on a pair.
    """
    pc, pp, oc, op = (_as2d(a) for a in (pred_clean, pred_pert, obs_clean, obs_pert))
    if not pc.shape == pp.shape == oc.shape == op.shape:
        raise ValueError("all inputs must have the same shape (n_pairs, n_sites)")
    d_pred = pp - pc
    d_obs = op - oc
    ok = np.isfinite(d_pred) & np.isfinite(d_obs) & (d_pred != 0) & (d_obs != 0)
    agree = (np.sign(d_pred) == np.sign(d_obs)) & ok
    n = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n > 0, agree.sum(0) / np.maximum(n, 1), np.nan)
    return TransferResult(sign_agreement=frac, r=pearson_per_column(d_pred, d_obs), n_pairs=n)


@dataclass
class ScreeningReport:
    """Per-site screening metrics of one candidate model and the scalar used to rank candidates.

    Attributes
    ----------
    r, r_ceiled, ceiling : ndarray of shape (n_sites,)
    score : float
        Median ceiled predictivity over sites with a valid ceiling.
    cka : float or None
        Linear CKA between the model layer and the IT population, if features were given.
    transfer : TransferResult or None
    transfer_score : float or None
        Median over sites of the predicted-vs-observed change correlation; the tiebreak.
    """

    r: np.ndarray
    r_ceiled: np.ndarray
    ceiling: np.ndarray
    score: float
    cka: float | None = None
    transfer: TransferResult | None = None
    transfer_score: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def per_site(self, site_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Metrics keyed by site id (NaN kept as NaN), for storing beside the model version."""
        out: dict[str, dict[str, float]] = {}
        for i, sid in enumerate(site_ids):
            row = {
                "r": float(self.r[i]),
                "r_ceiled": float(self.r_ceiled[i]),
                "ceiling": float(self.ceiling[i]),
            }
            if self.transfer is not None:
                row["sign_agreement"] = float(self.transfer.sign_agreement[i])
                row["transfer_r"] = float(self.transfer.r[i])
            out[str(sid)] = row
        return out


def _nanmedian(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.median(a[np.isfinite(a)])) if np.any(np.isfinite(a)) else float("nan")


def screen_model(
    pred: np.ndarray,
    obs: np.ndarray,
    ceiling: np.ndarray,
    *,
    model_features: np.ndarray | None = None,
    transfer_pred: tuple[np.ndarray, np.ndarray] | None = None,
    transfer_obs: tuple[np.ndarray, np.ndarray] | None = None,
) -> ScreeningReport:
    """Screen one candidate model.

    Parameters
    ----------
    pred : ndarray of shape (n_images, n_sites)
        Out-of-sample predictions (e.g. :func:`models.readout.cross_val_predict`).
    obs : ndarray of shape (n_images, n_sites)
        Repeat-averaged responses.
    ceiling : ndarray of shape (n_sites,)
    model_features : ndarray of shape (n_images, n_features), optional
        Model-layer features of the same images, for CKA against ``obs``.
    transfer_pred, transfer_obs : (clean, perturbed) pairs of ndarrays (n_pairs, n_sites), optional
        Predictions and observations on yesterday's perturbed pairs.
    """
    r, r_ceiled = predictivity(pred, obs, ceiling)
    report = ScreeningReport(
        r=r, r_ceiled=r_ceiled, ceiling=np.asarray(ceiling, float), score=_nanmedian(r_ceiled)
    )
    if model_features is not None:
        o = _as2d(obs)
        rows = np.all(np.isfinite(o), axis=1)
        report.cka = linear_cka(np.asarray(model_features)[rows], o[rows])
    if (transfer_pred is None) != (transfer_obs is None):
        raise ValueError("give both transfer_pred and transfer_obs, or neither")
    if transfer_pred is not None and transfer_obs is not None:
        report.transfer = perturbation_transfer(
            transfer_pred[0], transfer_pred[1], transfer_obs[0], transfer_obs[1]
        )
        report.transfer_score = _nanmedian(report.transfer.r)
    return report


def pick_best(reports: Sequence[ScreeningReport], tol: float = 0.01) -> int:
    """Index of the candidate to use tonight.

    The highest ``score`` wins; candidates within ``tol`` of it are separated by ``transfer_score``
    (a model that already predicts how perturbations move the sites makes better perturbations),
    then by score.
    """
    if not reports:
        raise ValueError("no candidates to pick from")
    scores = np.array([rep.score if np.isfinite(rep.score) else -np.inf for rep in reports])
    best = scores.max()
    close = [i for i in range(len(reports)) if scores[i] >= best - tol]

    def key(i: int) -> tuple[float, float]:
        t = reports[i].transfer_score
        return (t if t is not None and np.isfinite(t) else -np.inf, scores[i])

    return max(close, key=key)
