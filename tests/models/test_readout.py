"""MultiRidgeCV: recovery of known readouts, agreement with scikit-learn, cross-validated predictions."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV

from models.readout import MultiRidgeCV, cross_val_predict

ALPHAS = np.logspace(-3, 5, 17)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def _problem(rng, n, p, m, noise=0.5):
    X = rng.normal(size=(n, p)) * rng.uniform(0.2, 5.0, size=p) + rng.normal(size=p)
    W = rng.normal(size=(p, m))
    b = rng.normal(size=m) * 3
    Y = X @ W + b + noise * rng.normal(size=(n, m))
    return X, Y, W, b


def test_recovers_known_readout(rng):
    X, Y, W, b = _problem(rng, n=400, p=10, m=6, noise=0.3)
    model = MultiRidgeCV().fit(X, Y)
    assert model.coef_.shape == (10, 6)
    assert model.intercept_.shape == model.alpha_.shape == (6,)
    np.testing.assert_allclose(model.coef_, W, atol=0.05)
    np.testing.assert_allclose(model.intercept_, b, atol=0.3)
    assert model.cv_scores_.shape == (ALPHAS.size, 6)
    # LOO error at the chosen penalty is close to the noise variance.
    np.testing.assert_allclose(model.best_score_, 0.09, rtol=0.3)


@pytest.mark.parametrize(("n", "p"), [(80, 25), (40, 90)])
def test_matches_sklearn_per_target(rng, n, p):
    X, Y, _, _ = _problem(rng, n=n, p=p, m=12, noise=1.0)
    Y *= rng.uniform(0.05, 3.0, size=12)  # targets with very different signal-to-noise
    Y[:, :4] = rng.normal(size=(n, 4))  # pure-noise sites pick large penalties
    ours = MultiRidgeCV(ALPHAS, standardize=False).fit(X, Y)
    ref = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X, Y)
    np.testing.assert_array_equal(ours.alpha_, ref.alpha_)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(-ours.best_score_, ref.best_score_, rtol=1e-7)
    assert len(set(ours.alpha_)) > 1


def test_loo_predictions_are_exact(rng):
    X, Y, _, _ = _problem(rng, n=30, p=5, m=3)
    model = MultiRidgeCV(standardize=False).fit(X, Y)
    i = 7
    keep = np.arange(30) != i
    for j in range(3):
        single = MultiRidgeCV([model.alpha_[j]], standardize=False).fit(X[keep], Y[keep, j : j + 1])
        np.testing.assert_allclose(
            model.loo_predictions_[i, j], single.predict(X[i : i + 1])[0, 0], rtol=1e-9
        )


def test_standardize_and_kfold_paths(rng):
    X, Y, W, _ = _problem(rng, n=200, p=8, m=4, noise=0.2)
    X[:, 0] *= 1e4  # wildly different feature scales
    W[0] /= 1e4
    Y = X @ W + 0.2 * rng.normal(size=(200, 4))
    for model in (MultiRidgeCV().fit(X, Y), MultiRidgeCV(cv=5).fit(X, Y)):
        np.testing.assert_allclose(model.predict(X), X @ W, atol=0.4)
        np.testing.assert_allclose(model.coef_[0], W[0], rtol=0.05)


def test_rejects_nan_and_bad_shapes(rng):
    X, Y, _, _ = _problem(rng, n=20, p=3, m=2)
    Y[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MultiRidgeCV().fit(X, Y)
    with pytest.raises(ValueError, match="images"):
        MultiRidgeCV().fit(X[:10], Y[:, :1])
    with pytest.raises(RuntimeError):
        MultiRidgeCV().predict(X)


def test_cross_val_predict_is_out_of_fold(rng):
    X, Y, W, b = _problem(rng, n=150, p=6, m=3, noise=0.5)
    pred = cross_val_predict(X, Y, n_folds=5, seed=0)
    assert pred.shape == Y.shape
    r = [np.corrcoef(pred[:, j], (X @ W + b)[:, j])[0, 1] for j in range(3)]
    assert min(r) > 0.98
    # Pure noise must not be predictable out of fold (in-sample fit would be).
    noise = rng.normal(size=(150, 2))
    pred_noise = cross_val_predict(rng.normal(size=(150, 40)), noise, n_folds=5, seed=1)
    r_noise = [np.corrcoef(pred_noise[:, j], noise[:, j])[0, 1] for j in range(2)]
    assert max(r_noise) < 0.3
