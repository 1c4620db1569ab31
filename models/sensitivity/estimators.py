"""Sensitivity estimators of DESIGN.md section 1, with hierarchical bootstrap intervals.

Per site ``i`` and pair ``j`` write ``d_ij = r_i(x_ij) - r_i(x_ij + delta_ij)`` for
the difference of trial-averaged responses and ``s_ij = sign(f_i(x_ij) -
f_i(x_ij + delta_ij))`` for the change the surrogate model predicted. Then, all
normalised by the site's spread ``sigma_i`` over clean images:

* ``plain``: ``mean_j |d_ij|``. Biased upward by trial noise: reads the noise
  floor even when ``delta = 0``.
* ``sign_corrected``: ``mean_j s_ij * d_ij``. Noise has mean zero, so this is
  unbiased for ``mean_j |true change|`` when the model gets the direction right,
  and lower when it does not (a lower bound, like every transferred measurement).
  Positive when the observed change goes the way the model predicted. Pairs with
  ``s_ij = 0`` (no predicted change) are left out.
* ``noise_floor``: what ``plain`` reads at ``delta = 0``. Split each clean image's
  repeats into random halves (h1, h2), take ``|mean_1 - mean_2| /
  sqrt(1/h1 + 1/h2)`` (the noise per unit of ``sqrt(1/n)``), average over splits
  and images, and multiply by ``mean_j sqrt(1/n_clean_ij + 1/n_perturbed_ij)``, the
  scale of the noise in ``d_ij`` at the repeat counts the pairs actually had.
* ``plain_noise_corrected``: ``sign(M) * sqrt(|M|)`` with ``M = mean_j (d_ij^2 -
  v_ij)``, where ``v_ij = s_c^2 / n_c + s_p^2 / n_p`` is the pair's own noise
  variance of ``d_ij`` from its trial variances. ``E[d^2] = Delta^2 + v`` and
  ``E[s^2] = var`` hold for any trial distribution, so ``M`` is unbiased for
  ``mean_j Delta_ij^2`` without assuming Gaussian or Poisson noise. Its root is
  the RMS change, which is ``>= mean_j |Delta_ij|`` and equal to it when a site's
  changes are of similar size, as they roughly are at one epsilon. The
  alternative, ``plain - noise_floor``, estimates the right quantity but is only
  exact at ``delta = 0``: for zero-mean noise ``e``, ``|Delta| <= E|Delta + e| <=
  |Delta| + E|e|``, so it undershoots by up to one floor when changes are
  comparable to the noise (the usual case): in the tests' simulation it reads
  about a third of the truth, the RMS form within about 10%. Both figures are
  stored, so that lower bound remains one subtraction away. The signed root
  (rather than a clip at 0) keeps the estimate centred near 0 when there is no
  change. The root of a noisy mean square is a few percent low (Jensen) with
  tens of pairs per site.
* ``random_pair``: ``E_{j != k} |r_i(x_j) - r_i(x_k)|`` over all ordered pairs of
  distinct clean images (exact, via sorting), the Gini mean difference. For a
  Gaussian spread of image means it equals ``2 / sqrt(pi) * sd = 1.128 sd``.

``sigma_i`` is the standard deviation (ddof=1) of the trial-averaged clean
responses, as in the paper (``sigma="plain"``). That spread includes trial
noise, so it overstates the spread of the true rates and deflates every
normalised figure a little; ``sigma="noise_corrected"`` subtracts the mean
variance of an image mean, ``sqrt(var_k(r_k) - mean_k(s_k^2 / n_k))``, which is
unbiased for the variance of the true rates over the images shown. ``"none"``
reports spike counts.

Intervals are percentile intervals of a hierarchical bootstrap: population
figures resample sites, then items (pairs, clean images) within each drawn
site; per-site figures resample items within the site. ``sigma_i`` is
re-estimated on each resample of the clean images, so its uncertainty is in
the interval (those resamples are drawn once and shared by all estimators,
see :class:`~models.sensitivity._core.CleanBootstrap`).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from ._core import (
    CleanBootstrap,
    PairEstimator,
    PairSet,
    Sigma,
    align_clean,
    clean_item_features,
    clean_stats,
    estimate,
    pair_item_features,
    site_reasons,
)
from .bootstrap import draw
from .data import CleanResponses, FloatArray, ModelPredictions, PairedResponses
from .records import ESTIMATORS, SensitivityEstimate, to_records

__all__ = [
    "ESTIMATORS",
    "SensitivityEstimate",
    "as_generator",
    "model_sensitivity",
    "pair_sensitivity",
    "random_pair_baseline",
    "site_sigma",
    "to_records",
]


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Accept a Generator, a seed, or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ---------------------------------------------------------------- public estimators


def site_sigma(clean: CleanResponses, *, sigma: Sigma = "plain") -> tuple[FloatArray, list[str | None]]:
    """Each site's spread over clean images, and why it is undefined where it is.

    Returns
    -------
    sigma : ndarray of shape (n_sites,)
        NaN where undefined (fewer than two images, or a non-positive noise-corrected variance).
    reasons : list of str or None, length n_sites
    """
    items = clean_item_features(clean, np.random.default_rng(0), 1)
    c = clean_stats(draw(items, np.arange(clean.n_sites)[None], None, items.names), sigma, False)
    reasons = site_reasons("sigma", c, None, sigma, 0, 2)
    sd = np.where([r is None for r in reasons], c["sigma"][0], np.nan)
    return sd, reasons


def pair_sensitivity(
    pairs: PairedResponses,
    clean: CleanResponses,
    *,
    estimator: PairEstimator = "sign_corrected",
    pair_set: PairSet = "guided",
    sigma: Sigma = "plain",
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_pairs: int = 2,
    min_images: int = 3,
    n_splits: int = 16,
    day: Hashable | None = None,
    site_intervals: bool = True,
) -> list[SensitivityEstimate]:
    """Sensitivity of every site and of the population at one epsilon.

    Parameters
    ----------
    pairs : PairedResponses
    clean : CleanResponses
        Same sites (matched by id; sites absent from ``clean`` are undefined).
    estimator : {"plain", "sign_corrected", "plain_noise_corrected", "noise_floor"}
    pair_set : {"guided", "random", "all"}
        Which pairs to use by their ``random_direction`` flag. ``"random"``
        labels the result ``model_free_<estimator>``.
    sigma : {"plain", "noise_corrected", "none"}
        Normaliser, see the module docstring.
    n_boot, ci : bootstrap resamples and interval coverage.
    rng : Generator or seed
    min_pairs, min_images : fewer usable pairs or clean images leave a site undefined.
    n_splits : random repeat splits per image for the noise floor.
    site_intervals : bool
        False skips the per-site bootstrap (their intervals are NaN), halving the cost.

    Returns
    -------
    list of SensitivityEstimate
        One per site (in ``pairs.site_ids`` order), then the population.
    """
    g = as_generator(rng)
    clean = align_clean(clean, pairs.site_ids)
    label = f"model_free_{estimator}" if pair_set == "random" else estimator
    return estimate(
        kind=estimator,
        label=label,
        clean=CleanBootstrap(clean_item_features(clean, g, n_splits), g, n_boot),
        pair_items=pair_item_features(pairs, pair_set),
        site_ids=pairs.site_ids,
        epsilon=pairs.epsilon,
        sigma=sigma,
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=min_pairs,
        min_images=min_images,
        day=day,
        site_intervals=site_intervals,
    )


def random_pair_baseline(
    clean: CleanResponses,
    *,
    sigma: Sigma = "plain",
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_images: int = 3,
    day: Hashable | None = None,
) -> list[SensitivityEstimate]:
    """``E_{j != k} |r_i(x_j) - r_i(x_k)| / sigma_i`` over clean images, per site and population.

    The yardstick for a sensitivity: near it, an epsilon perturbation moves the
    site as much as swapping the image for an unrelated one.
    """
    g = as_generator(rng)
    return estimate(
        kind="random_pair",
        label="random_pair",
        clean=CleanBootstrap(clean_item_features(clean, g, 1), g, n_boot),
        pair_items=None,
        site_ids=clean.site_ids,
        epsilon=None,
        sigma=sigma,
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=0,
        min_images=max(min_images, 2),
        day=day,
    )


def model_sensitivity(
    model: ModelPredictions,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_pairs: int = 2,
    min_images: int = 3,
    day: Hashable | None = None,
) -> list[SensitivityEstimate]:
    """``mean_j |f_i(x_j) - f_i(x_j + delta_j)| / sd_k f_i(x_k)``: the plain formula on noise-free f_i.

    Without noise the plain and sign-corrected estimators agree, and there is
    no noise floor. Labelled ``estimator="model"`` with ``model=model.name``.
    """
    g = as_generator(rng)
    pairs, clean = model.as_responses()
    return estimate(
        kind="plain",
        label="model",
        clean=CleanBootstrap(clean_item_features(clean, g, 1), g, n_boot),
        pair_items=pair_item_features(pairs, "all"),
        site_ids=pairs.site_ids,
        epsilon=model.epsilon,
        sigma="plain",
        rng=g,
        n_boot=n_boot,
        ci=ci,
        min_pairs=min_pairs,
        min_images=min_images,
        day=day,
        model=model.name,
    )
