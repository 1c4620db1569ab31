"""The factorized readout finds where a site looks and what it looks for, from noisy responses."""

from __future__ import annotations

import numpy as np
import pytest

from models.factorized_readout import FactorizedRidgeCV, factorized_cross_val_predict
from models.readout import MultiRidgeCV


def _planted(n: int, channels: int, positions: int, sites: int, seed: int = 0):
    """Features (n, channels * positions) and responses of sites with weights outer(w, m), plus noise."""
    rng = np.random.default_rng(seed)
    E = rng.gamma(2.0, 1.0, size=(n, channels, positions))  # energies are positive
    W = np.zeros((channels * positions, sites))
    for i in range(sites):
        w = np.zeros(channels)
        w[rng.choice(channels, 2, replace=False)] = rng.uniform(1, 2, 2)
        m = np.exp(-0.5 * ((np.arange(positions) - rng.integers(positions)) / 1.5) ** 2)
        W[:, i] = np.outer(w, m).ravel()
    X = E.reshape(n, -1)
    clean = X @ W
    Y = clean + rng.normal(0, clean.std(0) * 1.0, size=clean.shape)  # noise as large as the signal
    return X, Y, W


def test_recovers_the_planted_weights_better_than_a_full_ridge() -> None:
    X, Y, W = _planted(n=300, channels=12, positions=16, sites=3)
    fact = FactorizedRidgeCV(n_positions=16).fit(X, Y)
    full = MultiRidgeCV().fit(X, Y)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)

    # 192 weights per site from 300 noisy images: the full ridge cannot pin them down; 28 numbers can.
    assert np.all(cosine(fact.coef_, W) > 0.9), cosine(fact.coef_, W)
    assert np.all(cosine(fact.coef_, W) > cosine(full.coef_, W) + 0.1)
    assert fact.coef_.shape == W.shape and fact.intercept_.shape == (3,) and fact.alpha_.shape == (3,)
    assert np.allclose(fact.predict(X), X @ fact.coef_ + fact.intercept_)


def test_held_out_predictions_never_see_their_family() -> None:
    X, Y, _ = _planted(n=120, channels=4, positions=9, sites=2, seed=1)
    groups = np.repeat(np.arange(40), 3)  # a parent and two twins share a family
    pred = factorized_cross_val_predict(X, Y, groups, n_positions=9)
    assert np.isfinite(pred).all()
    # Changing one family's responses changes no prediction of that family (it was held out).
    Y2 = Y.copy()
    Y2[groups == 7] += 1000.0
    pred2 = factorized_cross_val_predict(X, Y2, groups, n_positions=9)
    assert np.allclose(pred[groups == 7], pred2[groups == 7])
    assert not np.allclose(pred[groups != 7], pred2[groups != 7])


def test_features_that_are_not_whole_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="whole channels"):
        FactorizedRidgeCV(n_positions=16).fit(np.ones((10, 20)), np.ones((10, 1)))


def test_the_batched_fit_equals_alternating_ridge_site_by_site() -> None:
    """All sites step together; the result is the per-site alternation with MultiRidgeCV."""
    X, Y, _ = _planted(n=150, channels=6, positions=9, sites=4, seed=3)
    select = np.arange(150) % 2 == 0
    fact = FactorizedRidgeCV(n_positions=9, n_iter=3).fit(X, Y, select=select)
    E = X.reshape(150, 6, 9)
    for i in range(4):
        m = np.full(9, 1 / 9)
        for _ in range(3):
            step_w = MultiRidgeCV().fit(E @ m, Y[:, [i]], select=select)
            w = step_w.coef_[:, 0]
            step_m = MultiRidgeCV().fit(w @ E, Y[:, [i]], select=select)
            m = step_m.coef_[:, 0]
        np.testing.assert_allclose(fact.coef_[:, i], np.outer(w, m).ravel(), rtol=1e-7, atol=1e-9)
        assert fact.intercept_[i] == pytest.approx(step_m.intercept_[0], rel=1e-7)
        assert fact.alpha_[i] == step_w.alpha_[0]
