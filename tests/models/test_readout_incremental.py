"""Incremental refit of the readout from running sufficient statistics (models/readout_stats.py)."""

import numpy as np
import pytest

from models.readout import MultiRidgeCV
from models.readout_stats import RidgeStats

ALPHAS = np.logspace(-3, 5, 17)


def _day(rng, n, W, b, shift=0.0):
    X = rng.normal(size=(n, W.shape[0])) * np.linspace(0.2, 5.0, W.shape[0]) + 40.0 + shift
    return X, X @ W + b + rng.normal(size=(n, W.shape[1])) * np.linspace(0.1, 8.0, W.shape[1])


@pytest.mark.parametrize(("standardize", "fit_intercept"), [(True, True), (False, True), (True, False)])
def test_day_by_day_update_equals_a_fit_from_scratch(standardize, fit_intercept):
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(30, 12)), rng.normal(size=12) * 3
    days = [_day(rng, n, W, b, shift=0.3 * d) for d, n in enumerate((60, 25, 40, 10))]
    inc = MultiRidgeCV(ALPHAS, cv="gcv", standardize=standardize, fit_intercept=fit_intercept).fit(*days[0])
    for X, Y in days[1:]:
        inc.update(X, Y)
    Xa, Ya = np.vstack([d[0] for d in days]), np.vstack([d[1] for d in days])
    full = MultiRidgeCV(ALPHAS, cv="gcv", standardize=standardize, fit_intercept=fit_intercept).fit(Xa, Ya)
    np.testing.assert_array_equal(inc.alpha_, full.alpha_)
    assert len(set(full.alpha_)) > 1  # noisy and clean sites: the test can tell penalties apart
    pf, pi = full.predict(Xa), inc.predict(Xa)
    assert np.max(np.abs(pi - pf)) <= 1e-6 * np.max(np.abs(pf - pf.mean(0)))
    assert inc.stats_.n == len(Xa)


def test_gcv_matches_its_closed_form_on_one_site():
    """GCV(a) = n RSS / (n - df)^2, from an explicit hat matrix (no shortcuts)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = X @ rng.normal(size=6) + rng.normal(size=40)
    m = MultiRidgeCV(ALPHAS, cv="gcv", standardize=False).fit(X, y[:, None])
    Xc, yc = X - X.mean(0), y - y.mean()
    for i, a in enumerate(ALPHAS):
        H = Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(6), Xc.T)
        rss = np.sum((yc - H @ yc) ** 2)
        df = np.trace(H) + 1
        np.testing.assert_allclose(m.cv_scores_[i, 0], 40 * rss / (40 - df) ** 2, rtol=1e-8)
    ref = np.linalg.solve(Xc.T @ Xc + m.alpha_[0] * np.eye(6), Xc.T @ yc)
    np.testing.assert_allclose(m.coef_[:, 0], ref, rtol=1e-8)


def test_gcv_and_loo_agree_on_a_well_spread_design():
    rng = np.random.default_rng(7)
    W, b = rng.normal(size=(20, 8)), rng.normal(size=8)
    X, Y = _day(rng, 400, W, b)
    g = MultiRidgeCV(ALPHAS, cv="gcv").fit(X, Y)
    loo = MultiRidgeCV(ALPHAS).fit(X, Y)
    assert np.mean(g.alpha_ == loo.alpha_) >= 0.75
    np.testing.assert_allclose(g.predict(X), loo.predict(X), rtol=0, atol=0.05 * np.abs(Y).max())


def test_bad_updates_are_refused():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    with pytest.raises(RuntimeError, match="gcv"):
        MultiRidgeCV().fit(X, Y).update(X, Y)
    m = MultiRidgeCV(cv="gcv").fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        m.update(X[:, :3], Y)
    with pytest.raises(ValueError, match="NaN"):
        m.update(X * np.nan, Y)
    with pytest.raises(ValueError, match="cv must"):
        MultiRidgeCV(cv="loo").fit(X, Y)
    with pytest.raises(ValueError, match="3 images"):
        RidgeStats.from_data(X[:2], Y[:2]) and MultiRidgeCV(cv="gcv").fit(X[:2], Y[:2])


def test_revised_means_and_stored_statistics_give_the_fit_from_scratch():
    """A night's case: statistics saved and read back, some earlier means changed, a day added."""
    rng = np.random.default_rng(5)
    W, b = rng.normal(size=(30, 12)), rng.normal(size=12) * 3
    (X0, Y0), (X1, Y1) = _day(rng, 80, W, b), _day(rng, 30, W, b, shift=0.2)
    first = MultiRidgeCV(ALPHAS, cv="gcv").fit(X0, Y0)
    kept = RidgeStats.from_arrays({k: v.copy() for k, v in first.stats_.to_arrays().items()})
    shown_again = np.array([3, 17, 40])
    Y0_new = Y0.copy()
    Y0_new[shown_again] = 0.5 * (Y0[shown_again] + rng.normal(size=(3, 12)))
    inc = MultiRidgeCV.from_stats(kept, ALPHAS).update(
        X1, Y1, revised=(X0[shown_again], Y0[shown_again], Y0_new[shown_again])
    )
    Xa, Ya = np.vstack([X0, X1]), np.vstack([Y0_new, Y1])
    full = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa, Ya)
    np.testing.assert_array_equal(inc.alpha_, full.alpha_)
    pf, pi = full.predict(Xa), inc.predict(Xa)
    assert np.max(np.abs(pi - pf)) <= 1e-6 * np.max(np.abs(pf - pf.mean(0)))
    # Revising alone (no new images) also refits.
    again = MultiRidgeCV.from_stats(RidgeStats.from_arrays(first.stats_.to_arrays()), ALPHAS)
    again.update(X0[:0], Y0[:0], revised=(X0[shown_again], Y0[shown_again], Y0_new[shown_again]))
    alone = MultiRidgeCV(ALPHAS, cv="gcv").fit(X0, Y0_new)
    np.testing.assert_allclose(again.predict(X0), alone.predict(X0), rtol=0, atol=1e-9 * np.abs(Y0).max())


def test_tridiagonal_and_eigendecomposition_routes_give_the_same_fit():
    """The night's route (one tridiagonal reduction, no eigenvectors) and the full
    eigendecomposition agree to rounding, penalty per site included; a zero penalty, which the
    tridiagonal solves cannot take on a rank-deficient design, goes the eigendecomposition way."""
    from models.readout_stats import RidgeStats, _gcv_eigh, _gcv_tridiagonal, fit_from_stats

    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 40)) @ (np.eye(40) + 0.3 * rng.normal(size=(40, 40)))
    Y = X[:, :5] @ rng.normal(size=(5, 6)) + rng.normal(size=(90, 6)) * np.array([0.1, 1, 3, 10, 30, 100])
    G, B, yy = X.T @ X, X.T @ Y, (Y**2).sum(0)
    alphas = np.logspace(-3, 5, 17)
    tri = _gcv_tridiagonal(G.copy(), B, yy, 90, alphas, 0.0)  # it overwrites its Gram matrix
    assert tri is not None
    eig = _gcv_eigh(G, B, yy, 90, alphas, 0.0)
    np.testing.assert_array_equal(tri[1], eig[1])
    assert len(set(tri[1])) > 2  # the sites chose different penalties: the test can tell
    np.testing.assert_allclose(tri[0], eig[0], rtol=1e-9)
    np.testing.assert_allclose(tri[2], eig[2], rtol=1e-8, atol=1e-12 * np.abs(eig[2]).max())
    # Rank-deficient design (more features than images) with a zero penalty in the grid.
    Xw = rng.normal(size=(20, 40))
    fit = fit_from_stats(RidgeStats.from_data(Xw, Y[:20]), np.array([0.0, 1.0, 10.0]))
    assert np.all(np.isfinite(fit.coef)) and np.all(np.isfinite(fit.cv_scores[1:]))


# "meta" stands for a device with no float64 solver (Apple's MPS): it must solve on the CPU; so
# must "cuda" where no GPU is visible (a readout carried to a CPU-only machine).
@pytest.mark.parametrize("device", ["cpu", "meta", "cuda"])
def test_an_update_solved_on_the_nights_device_equals_the_cpu_fit_from_scratch(device):
    """A GPU night solves the GCV readout by eigendecomposition on its GPU, a CPU night by
    tridiagonal reduction; an update on either gives the CPU's fit from scratch (same penalties,
    predictions within 1e-6), and the statistics it keeps stay CPU arrays (they are stored)."""
    rng = np.random.default_rng(5)
    W, b = rng.normal(size=(30, 12)), rng.normal(size=12) * 3
    days = [_day(rng, n, W, b, shift=0.2 * d) for d, n in enumerate((70, 30, 20))]
    inc = MultiRidgeCV(ALPHAS, cv="gcv", device=device).fit(*days[0])
    for X, Y in days[1:]:
        inc.update(X, Y)
    Xa, Ya = np.vstack([d[0] for d in days]), np.vstack([d[1] for d in days])
    full = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa, Ya)
    np.testing.assert_array_equal(inc.alpha_, full.alpha_)
    assert len(set(full.alpha_)) > 1
    pf, pi = full.predict(Xa), inc.predict(Xa)
    assert np.max(np.abs(pi - pf)) <= 1e-6 * np.max(np.abs(pf - pf.mean(0)))
    assert isinstance(inc.stats_.xx, np.ndarray) and isinstance(inc.coef_, np.ndarray)
