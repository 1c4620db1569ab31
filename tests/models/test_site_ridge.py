"""Batched per-site ridge fits equal one MultiRidgeCV fit per site, penalty choice included."""

from __future__ import annotations

import numpy as np
import pytest

from models.readout import MultiRidgeCV, one_per_group
from models.site_ridge import fit_site_ridge


def _designs(sites: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(sites, n, d)) * rng.uniform(0.01, 100, size=(sites, 1, d))  # scales differ
    beta = rng.normal(size=(sites, d))
    noise = rng.uniform(0.1, 3.0, size=sites)  # so sites choose different penalties
    Y = np.einsum("snd,sd->ns", X / X.std(1, keepdims=True), beta) + rng.normal(size=(n, sites)) * noise
    return X, Y


def _per_site(X: np.ndarray, Y: np.ndarray, select: np.ndarray | None) -> list[MultiRidgeCV]:
    return [MultiRidgeCV().fit(X[i], Y[:, [i]], select=select) for i in range(X.shape[0])]


@pytest.mark.parametrize("with_select", [False, True])
def test_equals_one_multiridge_fit_per_site(with_select: bool) -> None:
    X, Y = _designs(sites=20, n=90, d=7)  # 20 sites: more than one batch
    select = one_per_group(np.repeat(np.arange(30), 3)) if with_select else None
    got = fit_site_ridge(X, Y, select=select)
    ref = _per_site(X, Y, select)
    alphas = np.array([r.alpha_[0] for r in ref])
    assert np.unique(alphas).size > 2  # the comparison covers the penalty choice, not one alpha
    assert np.array_equal(got.alpha, alphas)
    np.testing.assert_allclose(got.coef, np.stack([r.coef_[:, 0] for r in ref]), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.intercept, [r.intercept_[0] for r in ref], rtol=1e-8, atol=1e-10)


def test_a_constant_or_duplicated_feature_changes_nothing_else() -> None:
    X, Y = _designs(sites=3, n=60, d=5, seed=2)
    Xd = np.concatenate([X, np.full((3, 60, 1), 4.0), X[:, :, :1]], axis=2)  # constant + duplicate column
    got = fit_site_ridge(Xd, Y)
    ref = _per_site(Xd, Y, None)
    assert np.all(np.isfinite(got.coef))
    assert np.array_equal(got.alpha, [r.alpha_[0] for r in ref])
    np.testing.assert_allclose(got.coef, np.stack([r.coef_[:, 0] for r in ref]), rtol=1e-7, atol=1e-9)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="sites, images, features"):
        fit_site_ridge(np.ones((2, 10, 3)), np.ones((10, 3)))
