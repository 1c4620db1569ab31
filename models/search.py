"""Across-day search: each site's sensitive direction, estimated from the twins it has already seen.

Every twin shown so far is a measured probe of every recorded site: for the pair (parent ``x``,
twin ``x + delta``) the recording gives the change ``y`` of each site, and for a small ``delta``
``y ~ g . delta`` where ``g`` is the site's gradient. Regressing the measured changes on the
twins' pixel differences therefore estimates ``g`` inside the subspace the loop's proposals have
spanned (every surrogate's and every earlier estimate's directions), from measured responses
alone. The estimate is then attacked like any linear surrogate, its twins are recorded, and the
next night's estimate has probes along its own direction too: the search recombines the best
directions across days even where every surrogate is poor. Random pixel directions would need
tens of thousands of presentations to find the same thing; the proposals make the subspace small.

The fit is kernel ridge regression on the Gram matrix of the differences (``n_pairs`` square),
with no intercept (no change without a perturbation), a penalty chosen per site by exact
leave-one-out, and leave-one-out predictions kept: they are the held-out evidence of how well the
estimate transfers, on the same footing as any surrogate's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PairDifferenceRidge"]


class PairDifferenceRidge:
    """Linear estimate of every site's gradient from measured pair differences.

    Parameters
    ----------
    alphas : sequence of float, default ``np.logspace(-4, 2, 13)``
        Penalties relative to the mean eigenvalue of the Gram matrix of differences.

    Attributes
    ----------
    coef_ : ndarray of shape (n_pixels, n_sites)
        Estimated gradient of each site (change per unit pixel value).
    alpha_ : ndarray of shape (n_sites,)
        Chosen absolute penalty per site.
    loo_pred_ : ndarray of shape (n_pairs, n_sites)
        Leave-one-out prediction of every pair's change.
    """

    def __init__(self, alphas: np.ndarray | None = None) -> None:
        self.alphas = alphas

    def fit(self, deltas: np.ndarray, changes: np.ndarray) -> PairDifferenceRidge:
        """Fit on ``deltas`` (n_pairs, n_pixels) and measured ``changes`` (n_pairs, n_sites).

        A NaN change (a site not recorded for a pair) counts as no change, the prior.
        """
        d = np.asarray(deltas, dtype=np.float64).reshape(len(deltas), -1)
        y = np.asarray(changes, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if d.shape[0] != y.shape[0] or d.shape[0] < 2:
            raise ValueError(f"need >= 2 pairs and as many changes as deltas; got {d.shape} and {y.shape}")
        y = np.where(np.isfinite(y), y, 0.0)
        gram = d @ d.T
        evals, evecs = np.linalg.eigh(gram)
        evals = np.clip(evals, 0.0, None)
        scale = max(float(evals.mean()), 1e-12)
        alphas = np.asarray(self.alphas if self.alphas is not None else np.logspace(-4, 2, 13)) * scale
        uty = evecs.T @ y  # (n_pairs, n_sites)
        best_err = np.full(y.shape[1], np.inf)
        best_alpha = np.full(y.shape[1], alphas[0])
        best_dual = np.zeros_like(y)
        best_loo = np.zeros_like(y)
        for a in alphas:
            shrink = evals / (evals + a)
            fitted = evecs @ (shrink[:, None] * uty)
            h = np.einsum("ij,j,ij->i", evecs, shrink, evecs)
            loo = y - (y - fitted) / np.maximum(1.0 - h, 1e-9)[:, None]
            err = ((y - loo) ** 2).mean(axis=0)
            better = err < best_err
            if better.any():
                dual = evecs @ (uty / (evals + a)[:, None])
                best_err = np.where(better, err, best_err)
                best_alpha = np.where(better, a, best_alpha)
                best_dual[:, better] = dual[:, better]
                best_loo[:, better] = loo[:, better]
        self.coef_ = d.T @ best_dual
        self.alpha_ = best_alpha
        self.loo_pred_ = best_loo
        return self

    def predict(self, deltas: np.ndarray) -> np.ndarray:
        """Predicted change for pixel differences ``deltas`` (n, n_pixels): (n, n_sites)."""
        return np.asarray(deltas, dtype=np.float64).reshape(len(deltas), -1) @ self.coef_
