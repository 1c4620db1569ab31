"""A blended readout: the mean of a ridge readout on a coarse layout and factorized ones on finer layouts.

No single readout of the ``vone_energy`` energies suits every energy-model brain: the ridge
readout on a 2x2 grid (``vone_energy``) spreads a site's gradient over a quadrant, which misses
compact sites, and the factorized readout on a finer grid (:mod:`models.factorized_readout`)
localises the gradient but fits coarse, saturating sites worse. Their mean is an ensemble of two
surrogates that share one front end, and ensembles transfer better than their members because
each member's idiosyncratic directions average out while the directions they agree on remain
(the standard result for transfer attacks, and what was measured here). Outside the loop
(``benchmarks/bench_offline_twins.py``: 2,304 noisy training images, the demo's attack on
held-out images, median found fraction in the twin's own direction, mean over eps 0.5 / 1 / 2,
seed 0), the mean of the 2x2 ridge and the 4x4 factorized readouts found 0.47 / 0.33 / 0.59 of
white-box on ``v1`` / ``v1coarse`` / ``v1fine``, against 0.44 / 0.31 / 0.45 for the ridge alone
and 0.43 / 0.27 / 0.59 for the factorized one alone.

Unlike the loop's ensemble source (the mean of whole candidates, attacked as one model), the
blend is one candidate with one set of held-out predictions, so it has a noise-ceiled
predictivity of its own and can be chosen for a site on the first day, before any twin exists.

The blend is linear in the features (``coef_`` stacks each part's coefficients divided by the
number of parts), so the encoder, artifacts and synthesis use it like a ridge readout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.factorized_readout import FactorizedRidgeCV
from models.readout import MultiRidgeCV, group_folds, grouped_cross_val_predict

__all__ = ["BlendedReadout", "blended_cross_val_predict"]


class BlendedReadout:
    """Mean prediction of a ridge readout on the first feature block and factorized ones on the rest.

    Parameters
    ----------
    n_channels : int
        Channels of every block (the same cells pooled to each layout).
    positions : sequence of int
        Positions per channel of each block, in feature order (``(4, 16)`` for grids 2 and 4);
        the first block gets a :class:`models.readout.MultiRidgeCV`, every other block a
        :class:`models.factorized_readout.FactorizedRidgeCV`.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_sites)
        In the features' own units (``x_scale_`` is one).
    intercept_ : ndarray of shape (n_sites,)
    alpha_ : ndarray of shape (n_sites,)
        The ridge part's penalty, for reports.
    x_mean_, x_scale_ : ndarray of shape (n_features,)
    """

    def __init__(self, n_channels: int, positions: Sequence[int]) -> None:
        if n_channels < 1 or len(positions) < 2 or min(positions) < 1:
            raise ValueError("a blend needs at least one channel and two blocks of at least one position")
        self.n_channels = int(n_channels)
        self.positions = tuple(int(p) for p in positions)

    @property
    def n_features(self) -> int:
        return self.n_channels * sum(self.positions)

    def _blocks(self, X: np.ndarray) -> list[np.ndarray]:
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"{X.shape[1]} features, but {self.n_channels} channels x {self.positions} positions "
                f"make {self.n_features}"
            )
        edges = np.cumsum([0, *(self.n_channels * p for p in self.positions)])
        return [X[:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def fit(self, X: np.ndarray, Y: np.ndarray, *, select: np.ndarray | None = None) -> BlendedReadout:
        """Fit every part on its block; ``select`` (one image per family) chooses the penalties."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        blocks = self._blocks(X)
        parts: list[MultiRidgeCV | FactorizedRidgeCV] = [MultiRidgeCV().fit(blocks[0], Y, select=select)]
        for p, block in zip(self.positions[1:], blocks[1:], strict=True):
            parts.append(FactorizedRidgeCV(p).fit(block, Y, select=select))
        k = len(parts)
        self.coef_ = np.concatenate([np.asarray(p.coef_) for p in parts], axis=0) / k
        self.intercept_ = np.mean([np.asarray(p.intercept_) for p in parts], axis=0)
        self.alpha_ = np.asarray(parts[0].alpha_)
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = np.ones(X.shape[1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ValueError("readout is not fitted")
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


def blended_cross_val_predict(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    n_channels: int,
    positions: Sequence[int],
    n_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold predictions with whole families held out; NaN where no fold could hold one out."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    fold = group_folds(groups, X.shape[0], n_folds, seed)
    return grouped_cross_val_predict(X, Y, fold, lambda: BlendedReadout(n_channels, positions))
