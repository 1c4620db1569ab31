"""Linear readouts from backbone features to IT site responses.

All sites are fitted at once by ridge regression whose penalty is chosen per site by exact
leave-one-out (LOO) cross-validation. The LOO errors for every penalty and every site come from a
single eigendecomposition, as in scikit-learn's ``_RidgeGCV``: with the centred design
``X = U S V^T`` the hat matrix of penalty ``a`` is ``H_a = 1/n 11^T + U diag(s^2/(s^2+a)) U^T`` (the
``1/n`` term is the unpenalised intercept), and the LOO residual of image ``i`` is
``(y_i - yhat_i) / (1 - H_a[i, i])``. Nothing is refitted per fold, so choosing among 17 penalties
costs about as much as one fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.linalg import blas

from .readout_stats import RidgeStats, fit_from_stats

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = np.logspace(-3, 5, 17)

# Relative eigenvalue below which a direction of the design counts as null (numerical rank).
_RANK_TOL = 1e-10
# Memory budget (number of float64 entries) for one block of LOO residuals (n_images x alphas x sites).
_BLOCK_ENTRIES = 2**24


def _as_float64(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Return ``a`` as a 2-D C-contiguous float64 array, rejecting NaN/inf with a clear message."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 and name == "Y":
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} NaN/inf values; drop or impute them before fitting")
    return np.ascontiguousarray(arr)


class MultiRidgeCV:
    """Ridge regression for many sites at once, penalty chosen per site by exact LOO.

    Parameters
    ----------
    alphas : sequence of float, default ``np.logspace(-3, 5, 17)``
        Candidate penalties. With ``standardize=True`` they apply to z-scored features, so one grid
        suits backbones whose features differ in scale by orders of magnitude.
    fit_intercept : bool, default True
        Centre features and responses; the intercept is not penalised.
    standardize : bool, default True
        Divide each (centred) feature by its standard deviation before fitting. The scale is computed
        on all training images (it uses no responses, so the LOO estimate stays honest about ``Y``).
    cv : None, int or "gcv", default None
        ``None`` selects the penalty by exact leave-one-out (fast, closed form). An integer k uses
        k-fold cross-validation instead, refitting the closed form on each fold (slower; for
        data with strong dependence between neighbouring images). ``"gcv"`` uses generalised
        cross-validation from running sufficient statistics (:mod:`models.readout_stats`), so
        :meth:`update` folds in a new day's images at the cost of those images alone.
    device : str or torch.device or None, default None
        Where the linear algebra runs (float64 torch). ``None`` means CPU. With ``cv="gcv"`` a
        CUDA GPU solves by eigendecomposition there; the CPU (and any other device) by tridiagonal
        reduction.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_sites)
        Weights in the original (unstandardised) feature units, so ``X @ coef_ + intercept_``
        predicts responses directly.
    intercept_ : ndarray of shape (n_sites,)
    alpha_ : ndarray of shape (n_sites,)
        Penalty chosen for each site.
    cv_scores_ : ndarray of shape (n_alphas, n_sites)
        Cross-validated mean squared error of each penalty for each site (lower is better).
    best_score_ : ndarray of shape (n_sites,)
        Cross-validated mean squared error at the chosen penalty.
    loo_predictions_ : ndarray of shape (n_images, n_sites)
        Leave-one-out predictions at the chosen penalty (only when ``cv is None``); a free
        out-of-sample prediction for predictivity.
    stats_, select_stats_ : RidgeStats (``cv="gcv"`` only)
        Running statistics of all images, and of those the penalty is chosen on (None without
        ``select``).
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Standardisation applied before the fit (zeros / ones when disabled).
    y_mean_ : ndarray of shape (n_sites,)
    n_features_in_ : int
    """

    def __init__(
        self,
        alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
        *,
        fit_intercept: bool = True,
        standardize: bool = True,
        cv: int | str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.cv = cv
        self.device = device

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: np.ndarray | torch.Tensor,
        Y: np.ndarray | torch.Tensor,
        *,
        select: np.ndarray | None = None,
    ) -> MultiRidgeCV:
        """Fit all sites and choose each site's penalty.

        Parameters
        ----------
        X : array-like of shape (n_images, n_features)
        Y : array-like of shape (n_images, n_sites)
            Mean responses. NaN is rejected: a missing response has no unbiased imputation here, so
            the caller must drop the image (or the site).
        select : bool array of shape (n_images,), optional
            The images the penalty is chosen on (``cv=None`` or ``"gcv"``); the coefficients are
            fitted on all images at it. Leave-one-out and GCV assume exchangeable images: a twin
            left out is predicted from its near-identical parent at any penalty, so with twins in
            the criterion it chooses far too little shrinkage (on an energy-model brain, 100x
            less, and a surrogate gradient half as well aligned with the brain's). Pass one image
            per family (:func:`one_per_group`). Fewer than 3 selected: all images choose.

        Returns
        -------
        self : MultiRidgeCV
        """
        Xa = _as_float64(X, "X")
        Ya = _as_float64(Y, "Y")
        if Xa.shape[0] != Ya.shape[0]:
            raise ValueError(f"X has {Xa.shape[0]} images but Y has {Ya.shape[0]}")
        if Xa.shape[0] < 3:
            raise ValueError("need at least 3 images to fit and cross-validate a readout")
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or np.any(alphas <= 0):
            raise ValueError("alphas must be a non-empty sequence of positive numbers")
        sel = _selection(select, Xa.shape[0])
        if self.cv == "gcv":
            self.stats_ = RidgeStats.from_data(Xa, Ya)
            # Kept even when every image is selected, so later updates can add unselected twins.
            keep = None if select is None else _mask(select, Xa.shape[0])
            self.select_stats_ = (
                RidgeStats.from_data(Xa[keep], Ya[keep]) if keep is not None and keep.sum() >= 3 else None
            )
            return self._fit_stats(alphas)
        if isinstance(self.cv, str):
            raise ValueError(f"cv must be None, an integer or 'gcv', got {self.cv!r}")
        if sel is not None and self.cv is not None:
            raise ValueError("select works with cv=None (leave-one-out) or 'gcv', not k-fold")
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")

        x_mean = Xa.mean(axis=0) if self.fit_intercept else np.zeros(Xa.shape[1])
        y_mean = Ya.mean(axis=0) if self.fit_intercept else np.zeros(Ya.shape[1])
        if self.standardize:
            x_scale = Xa.std(axis=0)
            x_scale[x_scale < 1e-12 * max(1.0, float(np.abs(x_mean).max(initial=0.0)))] = 1.0
        else:
            x_scale = np.ones(Xa.shape[1])

        Xt = (torch.from_numpy(Xa).to(dev) - torch.from_numpy(x_mean).to(dev)) / torch.from_numpy(x_scale).to(
            dev
        )
        Yt = torch.from_numpy(Ya).to(dev) - torch.from_numpy(y_mean).to(dev)
        at = torch.from_numpy(alphas).to(dev)

        if self.cv is None and sel is not None:
            st = torch.from_numpy(sel).to(dev)
            Xs, Ys = Xt[st], Yt[st]
            if self.fit_intercept:  # the subset's own centring, as a fit on it alone would use
                Xs, Ys = Xs - Xs.mean(0), Ys - Ys.mean(0)
            _, chosen, mse, _ = _fit_loo(Xs, Ys, at, self.fit_intercept)
            coef_std, alpha_idx, _, loo_pred = _fit_loo(Xt, Yt, at, self.fit_intercept, fixed=chosen)
            self.loo_predictions_ = loo_pred.cpu().numpy() + y_mean
        elif self.cv is None:
            coef_std, alpha_idx, mse, loo_pred = _fit_loo(Xt, Yt, at, self.fit_intercept)
            self.loo_predictions_ = loo_pred.cpu().numpy() + y_mean
        else:
            coef_std, alpha_idx, mse = _fit_kfold(Xt, Yt, at, int(self.cv), self.fit_intercept)

        coef = coef_std.cpu().numpy() / x_scale[:, None]
        self.coef_ = coef
        self.intercept_ = y_mean - x_mean @ coef
        self.alpha_ = alphas[alpha_idx]
        self.cv_scores_ = mse
        self.best_score_ = mse[alpha_idx, np.arange(mse.shape[1])]
        self.x_mean_ = x_mean
        self.x_scale_ = x_scale
        self.y_mean_ = y_mean
        self.n_features_in_ = Xa.shape[1]
        n_edge = int(np.sum((alpha_idx == 0) | (alpha_idx == alphas.size - 1)))
        if n_edge:
            logger.info("%d of %d sites chose a penalty at the edge of the grid", n_edge, alpha_idx.size)
        return self

    def update(
        self,
        X: np.ndarray | torch.Tensor,
        Y: np.ndarray | torch.Tensor,
        *,
        revised: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        select: np.ndarray | None = None,
        revised_select: np.ndarray | None = None,
    ) -> MultiRidgeCV:
        """Add new images (a new day) and refit: the same model as :meth:`fit` on all images so far.

        Only with ``cv="gcv"``: the cost is the new images' share of the statistics plus one
        reduction of the ``p x p`` Gram matrix (:func:`models.readout_stats.fit_from_stats`),
        independent of how many images came before.  ``revised``
        ``(X_r, Y_old, Y_new)`` first changes the responses of images already counted (their
        mean moved because they were shown again); ``X`` may then have no rows. For a readout
        fitted with ``select``, ``select`` and ``revised_select`` say which of the new and the
        revised images the penalty is chosen on (default: all).
        """
        if self.cv != "gcv" or not hasattr(self, "stats_"):
            raise RuntimeError("update needs a readout fitted with cv='gcv'")
        chooser = getattr(self, "select_stats_", None)
        if revised is not None:
            Xr, Yo, Yn = (_as_float64(a, "Y" if k else "X") for k, a in enumerate(revised))
            self.stats_.revise(Xr, Yo, Yn)
            if chooser is not None:
                rs = _mask(revised_select, Xr.shape[0])
                if rs.any():
                    chooser.revise(Xr[rs], Yo[rs], Yn[rs])
        Xa = np.asarray(X, dtype=np.float64)
        if Xa.shape[0]:
            Xa = _as_float64(X, "X")
            Ya = _as_float64(Y, "Y")
            self.stats_.add(Xa, Ya)
            if chooser is not None:
                ns = _mask(select, Xa.shape[0])
                if ns.any():
                    chooser.add(Xa[ns], Ya[ns])
        return self._fit_stats(np.asarray(self.alphas, dtype=np.float64).ravel())

    @classmethod
    def from_stats(
        cls,
        stats: RidgeStats,
        alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
        *,
        fit_intercept: bool = True,
        standardize: bool = True,
        select_stats: RidgeStats | None = None,
        device: str | torch.device | None = None,
    ) -> MultiRidgeCV:
        """A GCV readout holding ``stats`` (e.g. kept from an earlier night), not yet refitted.

        ``select_stats``: those of the images the penalty is chosen on (see :meth:`fit`'s
        ``select``). Call :meth:`update` with the new images to fit it.
        """
        r = cls(alphas, fit_intercept=fit_intercept, standardize=standardize, cv="gcv", device=device)
        r.stats_ = stats
        r.select_stats_ = select_stats
        return r

    def _fit_stats(self, alphas: np.ndarray) -> MultiRidgeCV:
        chooser = getattr(self, "select_stats_", None)
        fit = fit_from_stats(
            self.stats_,
            alphas,
            fit_intercept=self.fit_intercept,
            standardize=self.standardize,
            choose_on=chooser if chooser is not None and chooser.n >= 3 else None,
            device=self.device,
        )
        self.coef_, self.intercept_ = fit.coef, fit.intercept
        self.alpha_ = alphas[fit.alpha_idx]
        self.cv_scores_ = fit.cv_scores
        self.best_score_ = fit.cv_scores[fit.alpha_idx, np.arange(fit.cv_scores.shape[1])]
        self.x_mean_, self.x_scale_, self.y_mean_ = fit.x_mean, fit.x_scale, fit.y_mean
        self.n_features_in_ = fit.coef.shape[0]
        return self

    def predict(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        """Predict responses, ndarray of shape (n_images, n_sites)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("MultiRidgeCV is not fitted yet; call fit first")
        Xa = _as_float64(X, "X")
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features, the readout was fitted on {self.n_features_in_}")
        return Xa @ self.coef_ + self.intercept_


def one_per_group(groups: Sequence[int] | np.ndarray) -> np.ndarray:
    """A mask with the first image of every group: one exchangeable image per family.

    With groups as a night passes them (a twin's group is its clean parent's id), this is every
    clean image, plus a twin whose parent is not in the set; what a penalty may be chosen on
    (:meth:`MultiRidgeCV.fit`'s ``select``).
    """
    g = np.asarray(groups)
    mask = np.zeros(g.shape[0], dtype=bool)
    mask[np.unique(g, return_index=True)[1]] = True
    return mask


def _mask(select: np.ndarray | None, n: int) -> np.ndarray:
    if select is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(select, dtype=bool).ravel()
    if m.shape != (n,):
        raise ValueError(f"select must have one entry per image ({n}), got shape {np.shape(select)}")
    return m


def _selection(select: np.ndarray | None, n: int) -> np.ndarray | None:
    """The rows a penalty is chosen on; None for all rows (none given, all, or fewer than 3)."""
    if select is None:
        return None
    m = _mask(select, n)
    if m.all():
        return None
    if m.sum() < 3:
        logger.info("only %d images to choose the penalty on; all %d choose it", int(m.sum()), n)
        return None
    return m


# ---------------------------------------------------------------------- closed forms
def _decompose(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin decomposition of the centred design ``X = U diag(s) V^T``, returning ``(U, s2, VS)``.

    Eigendecomposes whichever of ``X^T X`` and ``X X^T`` is smaller (one ``eigh`` shared by every
    penalty and every site). ``VS = X^T U = V diag(s)`` maps solutions back to feature space.
    Null directions (numerical rank) are dropped: they carry no fit and would divide by zero.
    """
    n, p = X.shape
    if n > p:
        if X.device.type == "cpu" and X.dtype == torch.float64:
            # BLAS syrk fills one triangle only: half the flops of X.T @ X.
            gram = torch.from_numpy(blas.dsyrk(1.0, X.contiguous().numpy().T, trans=0))
        else:
            gram = X.T @ X
        s2, V = torch.linalg.eigh(gram, UPLO="U")
        keep = s2 > _RANK_TOL * s2.max().clamp_min(torch.finfo(X.dtype).tiny)
        s2, V = s2[keep], V[:, keep]
        s = s2.sqrt()
        VS = V * s
        U = (X @ V) / s
    else:
        s2, U = torch.linalg.eigh(X @ X.T)
        keep = s2 > _RANK_TOL * s2.max().clamp_min(torch.finfo(X.dtype).tiny)
        s2, U = s2[keep], U[:, keep]
        VS = X.T @ U
    return U, s2, VS


def _fit_loo(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor,
    fit_intercept: bool,
    fixed: np.ndarray | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """Exact LOO over all penalties and sites from one decomposition.

    Returns the coefficients at each site's best penalty (standardised units), the chosen penalty
    index per site, the LOO mean squared errors (n_alphas, n_sites) and the LOO predictions (centred).
    With ``fixed`` (a penalty index per site, chosen elsewhere) those penalties are used instead.
    """
    n, m = Y.shape
    U, s2, VS = _decompose(X)
    Z = U.T @ Y  # (k, m): responses in the eigenbasis
    W = s2[None, :] / (s2[None, :] + alphas[:, None])  # (A, k) shrinkage factors
    lev = (U * U) @ W.T  # (n, A): penalised part of the hat-matrix diagonal
    if fit_intercept:
        lev = lev + 1.0 / n
    inv_one_minus = 1.0 / (1.0 - lev).clamp_min(1e-12)  # (n, A)

    n_alphas = alphas.shape[0]
    mse = torch.empty(n_alphas, m, dtype=X.dtype, device=X.device)
    n_blocks = -(-n_alphas * n * m // _BLOCK_ENTRIES)
    block = -(-n_alphas // n_blocks)
    g2 = inv_one_minus.square().T.unsqueeze(-1) / n  # (A, n, 1): squared LOO factors, mean folded in
    for a0 in range(0, n_alphas, block):
        a1 = min(n_alphas, a0 + block)
        # Fitted values for a block of penalties in one GEMM: U @ [w_a * Z for a in block].
        WZ = (W[a0:a1, :, None] * Z[None]).permute(1, 0, 2).reshape(Z.shape[0], -1)
        resid = (U @ WZ).view(n, a1 - a0, m)
        resid.neg_().add_(Y[:, None, :]).square_()
        # mse[a, j] = sum_i resid[i, a, j]^2 / (1 - h[i, a])^2 / n, as one batched contraction.
        mse[a0:a1] = torch.bmm(resid.permute(1, 2, 0), g2[a0:a1]).squeeze(-1)
    best = torch.argmin(mse, dim=0)  # first minimum on ties, like scikit-learn
    if fixed is not None:
        best = torch.as_tensor(np.asarray(fixed, dtype=np.int64), device=X.device)
    shrink = W[best].T  # (k, m)
    fitted = U @ (shrink * Z)
    loo_pred = Y - (Y - fitted) * inv_one_minus[:, best]
    coef = VS @ (Z / (s2[:, None] + alphas[best][None, :]))
    return coef, best.cpu().numpy(), mse.cpu().numpy(), loo_pred


def _fit_kfold(
    X: torch.Tensor, Y: torch.Tensor, alphas: torch.Tensor, n_folds: int, fit_intercept: bool
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Penalty selection by contiguous k-fold CV, refitting the closed form on each fold."""
    n, m = Y.shape
    if not 2 <= n_folds <= n:
        raise ValueError(f"cv must be between 2 and n_images={n}, got {n_folds}")
    sse = torch.zeros(alphas.shape[0], m, dtype=X.dtype, device=X.device)
    folds = np.array_split(np.arange(n), n_folds)
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        Xtr, Ytr = X[train], Y[train]
        xm = Xtr.mean(0) if fit_intercept else torch.zeros_like(Xtr[0])
        ym = Ytr.mean(0) if fit_intercept else torch.zeros_like(Ytr[0])
        U, s2, VS = _decompose(Xtr - xm)
        Z = U.T @ (Ytr - ym)
        Xte = (X[test] - xm) @ VS  # (n_test, k)
        for i, a in enumerate(alphas):
            pred = Xte @ (Z / (s2[:, None] + a)) + ym
            sse[i] += ((Y[test] - pred) ** 2).sum(0)
    mse = sse / n
    best = torch.argmin(mse, dim=0)
    U, s2, VS = _decompose(X)
    Z = U.T @ Y
    coef = VS @ (Z / (s2[:, None] + alphas[best][None, :]))
    return coef, best.cpu().numpy(), mse.cpu().numpy()


def cross_val_predict(
    X: np.ndarray | torch.Tensor,
    Y: np.ndarray | torch.Tensor,
    n_folds: int = 5,
    seed: int = 0,
    groups: Sequence[int] | np.ndarray | None = None,
    **ridge_params: object,
) -> np.ndarray:
    """Out-of-fold predictions of a :class:`MultiRidgeCV` readout, for predictivity.

    Each image is predicted by a readout that never saw it; the penalty is chosen inside each
    training fold (nested), so the predictions carry no selection bias.

    With ``groups``, images of one group share a fold (:func:`group_folds`). The night passes a
    clean image and all its perturbed twins as one group: plain folds would predict a twin from
    its near-identical parent's *observed* response (and vice versa), which makes predicted
    changes anti-correlated with observed ones and inflates predictivity.

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
    Y : array-like of shape (n_images, n_sites)
    n_folds : int, default 5
    seed : int, default 0
        Seed of the random image-to-fold (or group-to-fold) assignment.
    groups : sequence of int of length n_images, optional
        Group label of each image; a fold holds whole groups.
    **ridge_params
        Passed to :class:`MultiRidgeCV`.

    Returns
    -------
    ndarray of shape (n_images, n_sites)
        With ``groups``, NaN for images no fold could hold out (a single group, or a fold that
        would leave nothing to train on).
    """
    Xa = _as_float64(X, "X")
    Ya = _as_float64(Y, "Y")
    n = Xa.shape[0]
    if groups is not None:
        fold = group_folds(groups, n, n_folds, seed)
        return grouped_cross_val_predict(Xa, Ya, fold, lambda: MultiRidgeCV(**ridge_params))  # type: ignore[arg-type]
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be between 2 and n_images={n}, got {n_folds}")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty_like(Ya)
    for test in np.array_split(order, n_folds):
        train = np.setdiff1d(order, test)
        model = MultiRidgeCV(**ridge_params).fit(Xa[train], Ya[train])  # type: ignore[arg-type]
        out[test] = model.predict(Xa[test])
    return out


def group_folds(groups: Sequence[int] | np.ndarray, n_images: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each image: the groups, in a seeded random order, dealt round-robin to folds.

    With fewer groups than folds, only ``n_groups`` folds are used (each holds one group).
    """
    g = np.asarray(groups)
    if g.shape != (n_images,):
        raise ValueError(f"groups must have one label per image ({n_images}), got shape {g.shape}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    fold_of = {
        grp: i % n_folds for i, grp in enumerate(np.random.default_rng(seed).permutation(np.unique(g)))
    }
    return np.array([fold_of[grp] for grp in g], dtype=np.int64)


def grouped_cross_val_predict(
    X: np.ndarray, Y: np.ndarray, fold: np.ndarray, make_readout: Callable[[], Any]
) -> np.ndarray:
    """Out-of-fold predictions over precomputed folds; NaN where a fold cannot be held out.

    ``make_readout()`` gives a fresh unfitted readout (``fit(X, Y)``, ``predict(X)``) per fold.
    """
    out = np.full(Y.shape, np.nan)
    for k in range(int(fold.max(initial=-1)) + 1):
        test = fold == k
        if test.all() or not test.any():
            continue
        out[test] = make_readout().fit(X[~test], Y[~test]).predict(X[test])
    return out
