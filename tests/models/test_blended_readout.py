"""The blended readout is the mean of its parts, each on its own block, and is held out honestly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.blended_readout import BlendedReadout, blended_cross_val_predict
from models.factorized_readout import FactorizedRidgeCV
from models.readout import MultiRidgeCV
from models.vone import vone_energy


def _blocks(n: int, channels: int, positions: tuple[int, ...], sites: int, seed: int = 0):
    """Positive features in blocks of (channels, positions) and noisy responses to the first two blocks."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 1.0, size=(n, channels * sum(positions)))
    W = rng.normal(size=(X.shape[1], sites)) * (rng.uniform(size=(X.shape[1], 1)) < 0.2)
    clean = X @ W
    return X, clean + rng.normal(0, clean.std(0) * 0.5, size=clean.shape)


def test_prediction_is_the_mean_of_a_ridge_and_a_factorized_part_on_their_own_blocks() -> None:
    X, Y = _blocks(n=200, channels=5, positions=(4, 16), sites=3)
    blend = BlendedReadout(5, (4, 16)).fit(X, Y)
    ridge = MultiRidgeCV().fit(X[:, :20], Y)
    fact = FactorizedRidgeCV(16).fit(X[:, 20:], Y)
    expected = (ridge.predict(X[:, :20]) + fact.predict(X[:, 20:])) / 2
    assert np.allclose(blend.predict(X), expected)
    # Linear in the features, so an encoder can carry it like a ridge readout.
    assert np.allclose(blend.predict(X), X @ blend.coef_ + blend.intercept_)
    assert blend.coef_.shape == (100, 3) and blend.alpha_.shape == (3,)


def test_held_out_predictions_never_see_their_family() -> None:
    X, Y = _blocks(n=120, channels=3, positions=(4, 9), sites=2, seed=1)
    groups = np.repeat(np.arange(40), 3)
    pred = blended_cross_val_predict(X, Y, groups, 3, (4, 9))
    Y2 = Y.copy()
    Y2[groups == 5] += 1000.0
    pred2 = blended_cross_val_predict(X, Y2, groups, 3, (4, 9))
    assert np.isfinite(pred).all()
    assert np.allclose(pred[groups == 5], pred2[groups == 5])
    assert not np.allclose(pred[groups != 5], pred2[groups != 5])


def test_features_that_do_not_fill_the_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="make 20"):
        BlendedReadout(4, (1, 4)).fit(np.ones((10, 21)), np.ones((10, 1)))
    with pytest.raises(ValueError, match="two blocks"):
        BlendedReadout(4, (4,))


def test_the_energy_front_end_gives_each_layout_of_the_same_cells_as_one_block() -> None:
    """grid=[2, 4] is grid 2's features then grid 4's, each flattened channel-major."""
    x = torch.rand(2, 3, 64, 64)
    both = vone_energy(grid=[2, 4])(x)
    two, four = vone_energy(grid=2)(x), vone_energy(grid=4)(x)
    assert both.shape == (2, two.shape[1] * 4 + four.shape[1] * 16)
    assert torch.allclose(both, torch.cat([two.flatten(1), four.flatten(1)], dim=1))
