"""A factorized readout: per site, one spatial map times one weight per feature channel.

A plain ridge readout on a ``C x P`` feature map (channels x positions) has ``C * P`` weights per
site, so it needs a coarse grid (``vone_energy``'s 2x2) to be learnable from a few thousand
images, and its gradient then spreads over a whole quadrant. A site whose subunits sit at one
place and share one orientation, scale and colour (an energy-model V1 or IT site) is described by
``P + C`` numbers: *where* it looks (the spatial map ``m``) and *what* it looks for (the channel
weights ``w``), its weights being ``outer(w, m)``. This is the factorized readout of
neuralpredictors-style models (Klindt et al. 2017), fitted here by alternating ridge
regressions, each with its penalty chosen as :class:`models.readout.MultiRidgeCV` would (all
sites in one batched solve, :mod:`models.site_ridge`): with ``m``
fixed the features are ``E @ m`` (one per channel), with ``w`` fixed they are ``w @ E`` (one per
position), and each step is a small exact ridge problem.

The fitted readout is linear in the flattened features (``coef_`` is ``outer(w, m)`` per site),
so everything downstream (the encoder, artifacts, synthesis) uses it like a ridge readout.

Measured outside the loop (``benchmarks/bench_offline_twins.py``), on 2,304 noisy training
images of the energy-model families at 8x8 positions, against ``vone_energy``'s 2x2 ridge
readout: the twins' found fraction (mean, of white-box) on ``v1fine`` 0.36 against 0.23, but on
``v1`` 0.29 against 0.33 and on the coarse, saturating ``v1coarse`` 0.20 against 0.29: no readout
suits every brain, which is why the loop chooses per site by measured transfer.
"""

from __future__ import annotations

import numpy as np

from models.readout import group_folds, grouped_cross_val_predict
from models.site_ridge import fit_site_ridge

__all__ = ["FactorizedRidgeCV", "factorized_cross_val_predict"]


class FactorizedRidgeCV:
    """Alternating ridge for weights ``outer(w_i, m_i)`` on features laid out as (channels, positions).

    Parameters
    ----------
    n_positions : int
        Positions per channel; the flattened features are channel-major, ``(C, P)`` (what
        ``flatten`` gives on a (C, grid, grid) map).
    n_iter : int, default 6
        Alternations (each a channel step and a position step), starting from the uniform map.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_sites)
    intercept_ : ndarray of shape (n_sites,)
    alpha_ : ndarray of shape (n_sites,)
        The channel step's penalty (on z-scored channel features), for reports.
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Feature means and unit scales: the coefficients are in the features' own units.
    """

    def __init__(self, n_positions: int, n_iter: int = 6) -> None:
        if n_positions < 1 or n_iter < 1:
            raise ValueError("n_positions and n_iter must be at least 1")
        self.n_positions = n_positions
        self.n_iter = n_iter

    def _channels(self, X: np.ndarray) -> np.ndarray:
        n, f = X.shape
        if f % self.n_positions:
            raise ValueError(f"{f} features are not whole channels of {self.n_positions} positions")
        return X.reshape(n, f // self.n_positions, self.n_positions)

    def fit(self, X: np.ndarray, Y: np.ndarray, *, select: np.ndarray | None = None) -> FactorizedRidgeCV:
        """Fit every site; ``select`` (one image per family) chooses the penalties, as in MultiRidgeCV."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} images but Y has {Y.shape[0]}")
        E = self._channels(X)  # (n, C, P)
        n, n_channels = E.shape[:2]
        n_sites = Y.shape[1]
        by_position = E.reshape(n * n_channels, self.n_positions)  # one GEMM per step, not einsum
        by_channel = E.transpose(0, 2, 1).reshape(n * self.n_positions, n_channels)
        # Every site starts from the grid-average readout; all sites step together (models.site_ridge).
        m = np.full((n_sites, self.n_positions), 1.0 / self.n_positions)
        for _ in range(self.n_iter):
            per_channel = (by_position @ m.T).reshape(n, n_channels, n_sites).transpose(2, 0, 1)
            step_w = fit_site_ridge(per_channel, Y, select=select)
            w = step_w.coef
            per_position = (by_channel @ w.T).reshape(n, self.n_positions, n_sites).transpose(2, 0, 1)
            step_m = fit_site_ridge(per_position, Y, select=select)
            m = step_m.coef
        coef = np.einsum("sc,sp->cps", w, m).reshape(-1, n_sites)
        intercept, alpha = step_m.intercept, step_w.alpha
        self.coef_, self.intercept_, self.alpha_ = coef, intercept, alpha
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = np.ones(X.shape[1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ValueError("readout is not fitted")
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


def factorized_cross_val_predict(
    X: np.ndarray, Y: np.ndarray, groups: np.ndarray, n_positions: int, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold predictions with whole families held out (see :func:`models.readout.cross_val_predict`).

    NaN for images no fold could hold out (a single family).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    fold = group_folds(groups, X.shape[0], n_folds, seed)
    return grouped_cross_val_predict(X, Y, fold, lambda: FactorizedRidgeCV(n_positions))
