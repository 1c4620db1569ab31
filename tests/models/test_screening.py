"""Screening metrics: noise ceiling, ceiled predictivity, CKA invariances, perturbation transfer."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from models.screening import (
    ScreeningReport,
    linear_cka,
    pearson_per_column,
    perturbation_transfer,
    pick_best,
    predictivity,
    screen_model,
    split_half_reliability,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def _repeats(rng, n_images, var_s, var_n, n_rep):
    """Trials = signal (variance var_s per site) + noise (variance var_n), shape (images, sites, reps)."""
    signal = rng.normal(size=(n_images, len(var_s))) * np.sqrt(var_s)
    trials = signal[..., None] + rng.normal(size=(n_images, len(var_s), n_rep)) * np.sqrt(var_n)[:, None]
    return signal, trials


def test_pearson_per_column_matches_numpy_and_skips_nan(rng):
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    b[:, 0] += a[:, 0]
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(pearson_per_column(a, b), expected, rtol=1e-12)
    a[5, 1] = np.nan
    r = pearson_per_column(a, b)
    keep = np.arange(50) != 5
    np.testing.assert_allclose(r[1], np.corrcoef(a[keep, 1], b[keep, 1])[0, 1], rtol=1e-12)
    assert np.isnan(pearson_per_column(np.ones((10, 1)), b[:10, :1])[0])


def test_noise_ceiling_matches_known_value(rng):
    var_s = np.array([1.0, 1.0, 0.5, 2.0])
    var_n = np.array([1.0, 8.0, 4.0, 0.5])
    n_rep = 8
    _, trials = _repeats(rng, 8000, var_s, var_n, n_rep)
    expected = var_s / (var_s + var_n / n_rep)  # 0.889, 0.5, 0.5, 0.970
    got = split_half_reliability(trials, n_splits=20, seed=0)
    np.testing.assert_allclose(got, expected, atol=0.03)  # ~3.5 sampling SDs at 8000 images
    # Missing repeats (NaN) lower the ceiling as fewer trials are averaged, but are handled.
    trials[:, :, 6:] = np.nan
    got6 = split_half_reliability(trials, n_splits=20, seed=0)
    np.testing.assert_allclose(got6, var_s / (var_s + var_n / 6), atol=0.03)


def test_ceiled_predictivity_is_one_for_noise_free_model(rng):
    var_s, var_n, n_rep = np.array([1.0, 0.5]), np.array([4.0, 2.0]), 6
    signal, trials = _repeats(rng, 3000, var_s, var_n, n_rep)
    ceiling = split_half_reliability(trials, n_splits=10)
    r, r_ceiled = predictivity(signal, trials.mean(2), ceiling)
    assert np.all(r < 0.85)  # raw correlation is attenuated by noise...
    np.testing.assert_allclose(r_ceiled, 1.0, atol=0.03)  # ...the ceiled one is not
    _, bad = predictivity(signal, trials.mean(2), np.array([0.0, np.nan]))
    assert np.all(np.isnan(bad))


def test_linear_cka_invariances(rng):
    X = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 20))
    Y = X[:, :5] + 0.5 * rng.normal(size=(60, 5))
    base = linear_cka(X, Y)
    assert 0.2 < base < 0.99
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    Q = ortho_group.rvs(20, random_state=1)
    assert linear_cka(X @ Q * 7.5 + 3.0, Y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X, Y * 0.01) == pytest.approx(base, rel=1e-10)
    # Gram form (more features than images) agrees with the feature form.
    Xw = rng.normal(size=(10, 40))
    Yw = Xw @ rng.normal(size=(40, 30))
    kx, ky = (Xw - Xw.mean(0)) @ (Xw - Xw.mean(0)).T, (Yw - Yw.mean(0)) @ (Yw - Yw.mean(0)).T
    assert linear_cka(Xw, Yw) == pytest.approx(np.sum(kx * ky) / np.linalg.norm(kx) / np.linalg.norm(ky))
    # Unrelated representations score low.
    assert linear_cka(rng.normal(size=(500, 3)), rng.normal(size=(500, 3))) < 0.05


def test_perturbation_transfer(rng):
    n, m = 200, 3
    pred_clean = rng.normal(size=(n, m))
    delta = rng.normal(size=(n, m))
    pred_pert = pred_clean + delta
    obs_clean = rng.normal(size=(n, m))
    obs_pert = obs_clean.copy()
    obs_pert[:, 0] += delta[:, 0]  # site 0 moves exactly as predicted
    obs_pert[:, 1] -= delta[:, 1]  # site 1 moves the opposite way
    obs_pert[:, 2] += rng.normal(size=n)  # site 2 moves at random
    obs_pert[0, 2] = np.nan
    res = perturbation_transfer(pred_clean, pred_pert, obs_clean, obs_pert)
    np.testing.assert_allclose(res.sign_agreement[:2], [1.0, 0.0])
    assert 0.35 < res.sign_agreement[2] < 0.65
    np.testing.assert_allclose(res.r[:2], [1.0, -1.0])
    np.testing.assert_array_equal(res.n_pairs, [n, n, n - 1])


def test_screen_model_and_pick_best(rng):
    var_s, var_n = np.ones(5), np.full(5, 2.0)
    signal, trials = _repeats(rng, 300, var_s, var_n, 4)
    obs = trials.mean(2)
    ceiling = split_half_reliability(trials, n_splits=10)
    good = screen_model(signal + 0.1 * rng.normal(size=signal.shape), obs, ceiling, model_features=signal)
    poor = screen_model(signal + 2.0 * rng.normal(size=signal.shape), obs, ceiling)
    assert isinstance(good, ScreeningReport)
    assert good.score > poor.score and good.cka is not None and good.cka > 0.5
    assert pick_best([poor, good]) == 1
    # Equal scores: the transfer score breaks the tie.
    d = rng.normal(size=(50, 5))
    c = np.zeros((50, 5))
    t_good = screen_model(signal, obs, ceiling, transfer_pred=(c, d), transfer_obs=(c, d))
    t_bad = screen_model(signal, obs, ceiling, transfer_pred=(c, d), transfer_obs=(c, -d))
    assert t_good.score == t_bad.score
    assert pick_best([t_bad, t_good]) == 1 and pick_best([t_good, t_bad]) == 0
    per_site = t_good.per_site(list("abcde"))
    assert set(per_site["a"]) == {"r", "r_ceiled", "ceiling", "sign_agreement", "transfer_r"}
