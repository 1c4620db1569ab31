"""Running sufficient statistics of a ridge readout, so a new day's refit costs its own images.

A night refits every site's readout on all days so far.  Ridge regression and its penalty
choice by generalised cross-validation (GCV; Golub, Heath & Wahba 1979) depend on the data only
through ``n``, ``sum x``, ``sum y``, ``X^T X``, ``X^T Y`` and ``sum y^2``, and these add over
days: :class:`RidgeStats` keeps them, :meth:`RidgeStats.add` folds in a day's images in
``O(n_new p^2)``, and :func:`fit_from_stats` solves every penalty and site from one
reduction of the ``p x p`` Gram matrix to tridiagonal form (a third of the cost of its full
eigendecomposition: no eigenvectors are formed).  A fit from the statistics of all days at
once and one updated day by day agree to rounding (the sums differ only in their order).

Exact leave-one-out (the default of :class:`models.readout.MultiRidgeCV`) needs every image's
leverage, so it cannot be updated this way; GCV is its rotation-invariant approximation and
chooses the same penalty on well-spread designs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas, lapack

__all__ = ["RidgeStats", "StatsFit", "fit_from_stats"]

# Relative eigenvalue below which a direction of the design counts as null (numerical rank).
_RANK_TOL = 1e-10


@dataclass
class RidgeStats:
    """Sums over every image seen, taken around a fixed reference (the first batch's means).

    Sums around a reference close to the mean keep ``X^T X - n mean mean^T`` from cancelling
    catastrophically when features have large means.

    Attributes
    ----------
    n : int
    x_ref, y_ref : ndarray (p,), (m,)
        The reference the sums are taken around.
    sx, sy : ndarray (p,), (m,)
        ``sum (x - x_ref)``, ``sum (y - y_ref)``.
    xx : ndarray (p, p)
        ``sum (x - x_ref)(x - x_ref)^T``; only the upper triangle is kept up to date.
    xy : ndarray (p, m)
        ``sum (x - x_ref)(y - y_ref)^T``.
    yy : ndarray (m,)
        ``sum (y - y_ref)^2`` per site.
    """

    n: int
    x_ref: np.ndarray
    y_ref: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    xx: np.ndarray
    xy: np.ndarray
    yy: np.ndarray

    @classmethod
    def empty_like(cls, X: np.ndarray, Y: np.ndarray) -> RidgeStats:
        """Zero sums, referenced at the means of this first batch."""
        p, m = X.shape[1], Y.shape[1]
        return cls(
            n=0,
            x_ref=X.mean(axis=0),
            y_ref=Y.mean(axis=0),
            sx=np.zeros(p),
            sy=np.zeros(m),
            xx=np.zeros((p, p), order="F"),
            xy=np.zeros((p, m)),
            yy=np.zeros(m),
        )

    @classmethod
    def from_data(cls, X: np.ndarray, Y: np.ndarray) -> RidgeStats:
        return cls.empty_like(X, Y).add(X, Y)

    def add(self, X: np.ndarray, Y: np.ndarray) -> RidgeStats:
        """Fold in new images (float64 arrays (n_new, p), (n_new, m)); returns ``self``."""
        if X.shape[1] != self.sx.shape[0] or Y.shape[1] != self.sy.shape[0]:
            raise ValueError(
                f"new data has {X.shape[1]} features and {Y.shape[1]} sites; "
                f"the statistics hold {self.sx.shape[0]} and {self.sy.shape[0]}"
            )
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} images but Y has {Y.shape[0]}")
        Xd = X - self.x_ref
        Yd = Y - self.y_ref
        self.n += X.shape[0]
        self.sx += Xd.sum(axis=0)
        self.sy += Yd.sum(axis=0)
        # BLAS syrk updates the upper triangle in place: half the flops of Xd.T @ Xd.
        self.xx = blas.dsyrk(1.0, Xd.T, beta=1.0, c=self.xx, trans=0, overwrite_c=1)
        self.xy += Xd.T @ Yd
        self.yy += np.einsum("ij,ij->j", Yd, Yd)
        return self

    def revise(self, X: np.ndarray, Y_old: np.ndarray, Y_new: np.ndarray) -> RidgeStats:
        """Change the responses of images already counted from ``Y_old`` to ``Y_new``; returns ``self``.

        A night pools each image's responses over every day it was shown, so an image shown
        again (a reference image, say) changes its mean; its features do not, so ``X^T X`` stays
        and only the response sums move, in ``O(n_changed p m)``.
        """
        if X.shape[0] != Y_old.shape[0] or Y_old.shape != Y_new.shape:
            raise ValueError(f"revision of {X.shape[0]} images with responses {Y_old.shape} -> {Y_new.shape}")
        if X.shape[1] != self.sx.shape[0] or Y_new.shape[1] != self.sy.shape[0]:
            raise ValueError("revised images do not match the statistics' features or sites")
        Xd = X - self.x_ref
        Yo, Yn = Y_old - self.y_ref, Y_new - self.y_ref
        self.sy += (Yn - Yo).sum(axis=0)
        self.xy += Xd.T @ (Yn - Yo)
        self.yy += np.einsum("ij,ij->j", Yn, Yn) - np.einsum("ij,ij->j", Yo, Yo)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as named arrays (for ``np.savez``); :meth:`from_arrays` reads them back."""
        return {
            "n": np.asarray(self.n, dtype=np.int64),
            "x_ref": self.x_ref,
            "y_ref": self.y_ref,
            "sx": self.sx,
            "sy": self.sy,
            "xx": self.xx,
            "xy": self.xy,
            "yy": self.yy,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> RidgeStats:
        return cls(
            n=int(a["n"]),
            x_ref=np.asarray(a["x_ref"], dtype=np.float64),
            y_ref=np.asarray(a["y_ref"], dtype=np.float64),
            sx=np.asarray(a["sx"], dtype=np.float64).copy(),
            sy=np.asarray(a["sy"], dtype=np.float64).copy(),
            xx=np.asfortranarray(a["xx"], dtype=np.float64).copy(order="F"),
            xy=np.asarray(a["xy"], dtype=np.float64).copy(),
            yy=np.asarray(a["yy"], dtype=np.float64).copy(),
        )


@dataclass
class StatsFit:
    """A readout solved from :class:`RidgeStats` (units as in :class:`models.readout.MultiRidgeCV`)."""

    coef: np.ndarray
    intercept: np.ndarray
    alpha_idx: np.ndarray
    cv_scores: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray


def _centred(stats: RidgeStats, fit_intercept: bool) -> tuple[np.ndarray, ...]:
    """Gram (upper triangle valid), cross products and response sums of squares, centred or not."""
    n = stats.n
    if fit_intercept:
        dx, dy = stats.sx / n, stats.sy / n
        gram = stats.xx - n * np.outer(dx, dx)
        xy = stats.xy - n * np.outer(dx, dy)
        yy = stats.yy - n * dy**2
        return gram, xy, yy, stats.x_ref + dx, stats.y_ref + dy
    # Uncentred sums from the referenced ones: sum x x^T = xx + r sx^T + sx r^T + n r r^T.
    r, q = stats.x_ref, stats.y_ref
    gram = stats.xx + np.outer(r, stats.sx) + np.outer(stats.sx, r) + n * np.outer(r, r)
    xy = stats.xy + np.outer(r, stats.sy) + np.outer(stats.sx, q) + n * np.outer(r, q)
    yy = stats.yy + 2 * q * stats.sy + n * q**2
    return gram, xy, yy, np.zeros_like(r), np.zeros_like(q)


def fit_from_stats(
    stats: RidgeStats,
    alphas: np.ndarray,
    *,
    fit_intercept: bool = True,
    standardize: bool = True,
    choose_on: RidgeStats | None = None,
    device: str | torch.device | None = None,
) -> StatsFit:
    """All sites at every penalty from one tridiagonal reduction of the Gram matrix; penalty per
    site by GCV.

    With ``G = Q T Q^T`` (``T`` tridiagonal, Householder reflectors for ``Q``; LAPACK ``sytrd``)
    and ``c = Q^T X^T y``, the coefficients at penalty ``a`` are ``Q z`` with
    ``(T + a I) z = c``, a tridiagonal solve in ``O(p m)``; the residual sum of squares is
    ``y^T y - c.z - a z.z`` and the degrees of freedom ``sum s2 / (s2 + a)`` over the
    eigenvalues ``s2`` of ``T`` (+1 for the intercept; eigenvalues alone cost ``O(p^2)``), so
    ``GCV(a) = n RSS(a) / (n - df(a))^2``. No eigenvector is ever formed: the reduction is a
    third of a full ``eigh``'s work, which is what a day's update costs beyond its own images.
    The eigendecomposition route (:func:`_gcv_eigh`) is kept for a penalty of 0 or a Gram
    matrix that rounding left indefinite; both give the same fit to rounding.

    With ``choose_on`` (the statistics of a subset of the images, e.g. one per family), each
    site's penalty is the one GCV prefers on that subset, and the coefficients are solved on all
    of ``stats`` at it (``cv_scores`` are then the subset's). GCV, like leave-one-out, assumes
    the images are exchangeable: a twin left out is predicted from its near-identical parent
    whatever the penalty, so twins in the criterion push it toward too little shrinkage.

    With ``device`` a CUDA GPU (a GPU night's), the solve is the eigendecomposition route on
    it, in float64 (other devices solve on the CPU): LAPACK's tridiagonal reduction is
    memory-bound and has no GPU counterpart here, while a GPU's ``eigh`` of the 2,048 x 2,048
    Gram matrix takes a fraction of the CPU's reduction. The sums stay on the CPU (they are what
    is stored); only the solve moves.
    """
    a = np.asarray(alphas, dtype=np.float64).ravel()
    # CUDA only: the solve is float64, which Apple's MPS lacks; any other device solves on the CPU,
    # as does a CUDA device this process cannot see (a readout carried to a CPU-only machine).
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dev = dev if dev.type == "cuda" and torch.cuda.is_available() else torch.device("cpu")
    fixed = chosen_scores = None
    if choose_on is not None:  # only the subset's penalties and scores: no coefficients there
        chosen_scores, fixed, *_ = _solve(choose_on, a, fit_intercept, standardize, dev, None, coef=False)
    gcv, best, coef_std, x_mean, x_scale, y_mean = _solve(stats, a, fit_intercept, standardize, dev, fixed)
    assert coef_std is not None
    coef = coef_std / x_scale[:, None]
    return StatsFit(
        coef=coef,
        intercept=y_mean - x_mean @ coef,
        alpha_idx=best,
        cv_scores=gcv if chosen_scores is None else chosen_scores,
        x_mean=x_mean,
        x_scale=x_scale,
        y_mean=y_mean,
    )


def _solve(
    stats: RidgeStats,
    a: np.ndarray,
    fit_intercept: bool,
    standardize: bool,
    dev: torch.device,
    fixed: np.ndarray | None,
    coef: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """GCV scores, penalty index per site and standardised coefficients (None unless ``coef``),
    with the centring and scale they are in; see :func:`fit_from_stats`."""
    n = stats.n
    if n < 3:
        raise ValueError("need at least 3 images to fit and cross-validate a readout")
    gram, xy, yy, x_mean, y_mean = _centred(stats, fit_intercept)
    p = gram.shape[0]
    if standardize:
        x_scale = np.sqrt(np.clip(np.diag(gram) / n, 0.0, None))
        x_scale[x_scale < 1e-12 * max(1.0, float(np.abs(x_mean).max(initial=0.0)))] = 1.0
    else:
        x_scale = np.ones(p)
    xy_s = xy / x_scale[:, None]
    extra_df = 1.0 if fit_intercept else 0.0

    def scaled_gram() -> np.ndarray:  # one per route tried: the tridiagonal route overwrites its own
        return gram / np.outer(x_scale, x_scale)

    tridiagonal = dev.type == "cpu" and bool(np.all(a > 0))
    solved = _gcv_tridiagonal(scaled_gram(), xy_s, yy, n, a, extra_df, fixed, coef) if tridiagonal else None
    if solved is None:
        solved = _gcv_eigh(scaled_gram(), xy_s, yy, n, a, extra_df, fixed, dev, coef)
    return (*solved, x_mean, x_scale, y_mean)


def _gcv(rss: np.ndarray, df: np.ndarray, n: int) -> np.ndarray:
    """``n RSS / (n - df)^2`` per penalty (rows) and site (columns); inf where no dof is left."""
    dof = np.clip(n - df, 0.0, None)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = n * np.clip(rss, 0.0, None) / np.maximum(dof**2, 1e-300)
    return np.where(dof > 0, out, np.inf)


def _gcv_tridiagonal(
    gs: np.ndarray,
    xy: np.ndarray,
    yy: np.ndarray,
    n: int,
    alphas: np.ndarray,
    extra_df: float,
    fixed: np.ndarray | None = None,
    coef: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """GCV scores, best penalty index and coefficients by tridiagonal reduction; None if ``T + a I``
    is not positive definite at some penalty (rounding left the Gram matrix indefinite). With
    ``fixed`` (a penalty index per site), the coefficients are those at ``fixed`` instead, and
    only those penalties are solved (the other scores are NaN: the caller has the subset's).
    Without ``coef`` no coefficient is formed (a penalty choice only: one ``ormqr`` less).

    ``gs`` (C-ordered, upper triangle valid) is overwritten: it is the caller's scratch copy.
    """
    p, m = xy.shape
    # The statistics keep the upper triangle; seen in Fortran order, a C-ordered array is its own
    # transpose, whose lower triangle that is: sytrd reads it in place, without a copy.
    lwork = int(lapack.dsytrd_lwork(p, lower=1)[0])
    refl, diag, off, tau, info = lapack.dsytrd(gs.T, lower=1, lwork=lwork, overwrite_a=1)
    if info != 0:
        return None
    # With the lower triangle, Q = diag(1, Q') and Q' is the QR-form product of the reflectors
    # stored below the subdiagonal, so torch.ormqr applies it without forming it.
    h = torch.from_numpy(refl[1:, : p - 1])
    tau_t = torch.from_numpy(np.ascontiguousarray(tau))

    def apply_q(b: np.ndarray, transpose: bool) -> np.ndarray:
        out = b.copy()
        if p > 1:
            rest = torch.from_numpy(np.ascontiguousarray(b[1:]))
            out[1:] = torch.ormqr(h, tau_t, rest, left=True, transpose=transpose).numpy()
        return out

    c = apply_q(xy, transpose=True)
    s2 = lapack.dsterf(diag.copy(), off.copy())[0]
    s2 = s2[s2 > _RANK_TOL * max(float(s2.max(initial=0.0)), np.finfo(np.float64).tiny)]
    gcv = np.empty((alphas.size, m))
    best, best_z = np.zeros(m, dtype=np.int64), np.zeros((p, m))
    for k, a in enumerate(alphas):
        if fixed is not None and not np.any(fixed == k):
            gcv[k] = np.nan
            continue
        *_, z, info = lapack.dptsv(diag + a, off, c)
        if info != 0:
            return None
        rss = yy - np.einsum("ij,ij->j", c, z) - a * np.einsum("ij,ij->j", z, z)
        gcv[k] = _gcv(rss[None, :], np.array([np.sum(s2 / (s2 + a)) + extra_df]), n)[0]
        # Strictly better only, so ties keep the first minimum (as argmin does).
        if fixed is not None:
            better = fixed == k
        else:
            better = np.ones(m, dtype=bool) if k == 0 else gcv[k] < gcv[best, np.arange(m)]
        best[better] = k
        if coef:
            best_z[:, better] = z[:, better]
    return gcv, best, apply_q(best_z, transpose=False) if coef else None


def _gcv_eigh(
    gs: np.ndarray,
    xy: np.ndarray,
    yy: np.ndarray,
    n: int,
    alphas: np.ndarray,
    extra_df: float,
    fixed: np.ndarray | None = None,
    device: torch.device | None = None,
    coef: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The same as :func:`_gcv_tridiagonal` from a full eigendecomposition ``G = V diag(s2) V^T``:
    with ``P = V^T X^T y`` each eigen-direction shrinks by ``w = s2 / (s2 + a)``, so
    ``RSS = y^T y - sum (2 w - w^2) P^2 / s2`` and ``df = sum w``. Works for a penalty of 0.
    Computed on ``device`` (default the CPU) in float64."""
    dev = device if device is not None else torch.device("cpu")
    s2, V = torch.linalg.eigh(torch.from_numpy(gs).to(dev), UPLO="U")
    keep = s2 > _RANK_TOL * s2.max().clamp_min(torch.finfo(s2.dtype).tiny)
    s2, V = s2[keep], V[:, keep]
    P = V.T @ torch.from_numpy(xy).to(dev)  # (k, m) = diag(s) z
    z2 = P.square() / s2[:, None]
    a = torch.from_numpy(alphas).to(dev)
    W = s2[None, :] / (s2[None, :] + a[:, None])  # (A, k)
    rss = torch.from_numpy(yy).to(dev)[None, :] - (2 * W - W.square()) @ z2  # (A, m)
    gcv = _gcv(rss.cpu().numpy(), W.sum(dim=1).cpu().numpy() + extra_df, n)
    best = np.argmin(gcv, axis=0) if fixed is None else np.asarray(fixed, dtype=np.int64)
    if not coef:
        return gcv, best, None
    coef_std = V @ (P / (s2[:, None] + a[torch.from_numpy(best).to(dev)][None, :]))
    return gcv, best, coef_std.cpu().numpy()
