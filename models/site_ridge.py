"""Ridge regressions with one design per site, all sites in one batched computation.

:class:`models.readout.MultiRidgeCV` fits many sites that share one design (the backbone's
features). Some readouts give every site a design of its own: the factorized readout's
alternating steps (:mod:`models.factorized_readout`) regress site ``i`` on ``E @ m_i`` (its own
spatial map) or ``w_i @ E`` (its own channel weights). Fitting those one site at a time is a
Python loop of small solves (72 per site per night at the demo's settings, about a minute at demo
scale and far more at 200 sites); here they are stacked, ``X`` of shape (sites, images,
features), and every site's penalty is chosen by the same exact leave-one-out criterion, on the
same rows, with the same standardisation as ``MultiRidgeCV(...).fit(X_i, y_i, select=select)``
would use, so the results equal the per-site fits (tested to 1e-8).

The closed form avoids dividing by singular values, so rank-deficient designs need no special
case: with ``X^T X = V diag(s2) V^T`` and ``P = X V`` the fitted values at penalty ``a`` are
``P diag(1 / (s2 + a)) P^T y`` and the hat-matrix diagonal is ``(P * P) @ (1 / (s2 + a))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .readout import DEFAULT_ALPHAS, _selection

__all__ = ["SiteRidge", "fit_site_ridge"]

# Sites per batch: bounds the (sites, alphas, images) LOO residual block in memory.
_SITES_PER_BATCH = 16


@dataclass(frozen=True)
class SiteRidge:
    """Per-site ridge solutions in the designs' own units: ``X[i] @ coef[i] + intercept[i]``.

    Attributes
    ----------
    coef : ndarray of shape (n_sites, n_features)
    intercept : ndarray of shape (n_sites,)
    alpha : ndarray of shape (n_sites,)
        The penalty each site chose (on z-scored features).
    """

    coef: np.ndarray
    intercept: np.ndarray
    alpha: np.ndarray


def fit_site_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    select: np.ndarray | None = None,
) -> SiteRidge:
    """Fit site ``i`` on its own design ``X[i]``; penalty by exact LOO on the ``select`` rows.

    Parameters
    ----------
    X : ndarray of shape (n_sites, n_images, n_features)
    Y : ndarray of shape (n_images, n_sites)
    alphas : ndarray of shape (n_alphas,)
        Candidate penalties on z-scored features, as :class:`models.readout.MultiRidgeCV`.
    select : bool ndarray of shape (n_images,), optional
        The images the penalty is chosen on (one per family; see ``MultiRidgeCV.fit``); the
        coefficients are fitted on all images at it. Fewer than 3 selected: all choose.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 3 or Y.ndim != 2 or Y.shape != (X.shape[1], X.shape[0]):
        raise ValueError(f"X must be (sites, images, features), Y (images, sites); got {X.shape}, {Y.shape}")
    if X.shape[1] < 3:
        raise ValueError("need at least 3 images to fit and cross-validate a readout")
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    sel = _selection(select, X.shape[1])
    parts = [
        _fit_batch(X[s : s + _SITES_PER_BATCH], Y[:, s : s + _SITES_PER_BATCH].T, alphas, sel)
        for s in range(0, X.shape[0], _SITES_PER_BATCH)
    ]
    coef, intercept, alpha = (np.concatenate(p) for p in zip(*parts, strict=True))
    return SiteRidge(coef=coef, intercept=intercept, alpha=alpha)


def _fit_batch(
    X: np.ndarray, Y: np.ndarray, alphas: np.ndarray, sel: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of sites: ``X`` (s, n, d), ``Y`` (s, n)."""
    x_mean = X.mean(axis=1)  # (s, d)
    y_mean = Y.mean(axis=1)  # (s,)
    x_scale = X.std(axis=1)
    floor = 1e-12 * np.maximum(1.0, np.abs(x_mean).max(axis=1, initial=0.0))
    x_scale = np.where(x_scale < floor[:, None], 1.0, x_scale)
    Xt = (X - x_mean[:, None, :]) / x_scale[:, None, :]
    Yt = Y - y_mean[:, None]
    if sel is None:
        Xs, Ys = Xt, Yt
    else:  # the subset's own centring, as a fit on it alone would use
        Xs, Ys = Xt[:, sel], Yt[:, sel]
        Xs, Ys = Xs - Xs.mean(axis=1, keepdims=True), Ys - Ys.mean(axis=1, keepdims=True)
    best = np.argmin(_loo_mse(Xs, Ys, alphas), axis=1)  # (s,), first minimum on ties
    s2, V = _eig(Xt)
    Z = (Yt[:, None, :] @ (Xt @ V))[:, 0]
    coef_std = np.einsum("sde,se->sd", V, Z / (s2 + alphas[best][:, None]))
    coef = coef_std / x_scale
    intercept = y_mean - np.einsum("sd,sd->s", x_mean, coef)
    return coef, intercept, alphas[best]


def _eig(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of every site's ``X^T X``."""
    s2, V = np.linalg.eigh(np.swapaxes(X, 1, 2) @ X)
    return np.clip(s2, 0.0, None), V


def _loo_mse(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Exact LOO mean squared error (sites, alphas) of centred designs with an unpenalised intercept."""
    n = X.shape[1]
    s2, V = _eig(X)
    P = X @ V  # (s, n, d)
    Z = (Y[:, None, :] @ P)[:, 0]  # (s, d)
    inv = 1.0 / (s2[:, :, None] + alphas[None, None, :])  # (s, d, A)
    fitted = P @ (Z[:, :, None] * inv)  # (s, n, A)
    lev = (P * P) @ inv + 1.0 / n
    resid = (Y[:, :, None] - fitted) / np.clip(1.0 - lev, 1e-12, None)
    return np.mean(resid * resid, axis=1)
