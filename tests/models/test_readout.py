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


# --- grouped cross-validation (a clean image and its twins share a fold) -------------------------


def _family_cv_reference(X, Y, family, n_folds=5):
    """The night's former grouped CV (worker/stages/fit.py), kept here to pin the folded-in version."""
    fams = np.asarray(family)
    uniq = np.unique(fams)
    fold_of = {f: i % n_folds for i, f in enumerate(np.random.default_rng(0).permutation(uniq))}
    fold = np.array([fold_of[f] for f in fams])
    pred = np.full(Y.shape, np.nan)
    for k in range(min(n_folds, len(uniq))):
        test = fold == k
        if test.all() or not test.any():
            continue
        pred[test] = MultiRidgeCV().fit(X[~test], Y[~test]).predict(X[test])
    return pred


def _twins_problem(rng, n_clean=30, twins=2, p=8):
    """Clean images with near-identical twins whose responses share the parent's noise."""
    X0, Y0, _, _ = _problem(rng, n=n_clean, p=p, m=5, noise=2.0)
    X = np.concatenate([X0] + [X0 + 0.01 * rng.normal(size=X0.shape) for _ in range(twins)])
    Y = np.concatenate([Y0] * (twins + 1)) + 0.01 * rng.normal(size=(n_clean * (twins + 1), 5))
    groups = np.tile(np.arange(100, 100 + n_clean), twins + 1)
    return X, Y, groups


def test_grouped_cv_matches_the_nights_former_family_cv(rng):
    X, Y, groups = _twins_problem(rng)
    np.testing.assert_array_equal(cross_val_predict(X, Y, groups=groups), _family_cv_reference(X, Y, groups))


def test_grouped_cv_keeps_each_group_in_one_fold_and_predicts_it_blind(rng):
    from models.readout import group_folds

    X, Y, groups = _twins_problem(rng)
    fold = group_folds(groups, len(groups), 5)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    pred = cross_val_predict(X, Y, groups=groups)
    test = fold == 3
    blind = MultiRidgeCV().fit(X[~test], Y[~test]).predict(X[test])
    np.testing.assert_allclose(pred[test], blind)


def test_grouped_cv_is_honest_where_plain_cv_leaks_through_twins(rng):
    """Plain folds predict a twin from its near-copy's observed response; grouped folds cannot."""
    X, Y, groups = _twins_problem(rng, p=120)  # enough features to fit each image's noise
    plain = cross_val_predict(X, Y)
    grouped = cross_val_predict(X, Y, groups=groups)
    assert np.mean((plain - Y) ** 2) < 0.5 * np.mean((grouped - Y) ** 2)


def test_grouped_cv_leaves_nan_where_nothing_can_be_held_out(rng):
    X, Y, _, _ = _problem(rng, n=12, p=3, m=2)
    assert np.isnan(cross_val_predict(X, Y, groups=np.zeros(12, int))).all()
    two = cross_val_predict(X, Y, groups=np.arange(12) % 2)  # two groups: two folds, both predicted
    assert np.isfinite(two).all()


def test_grouped_cv_refuses_mismatched_groups(rng):
    X, Y, _, _ = _problem(rng, n=12, p=3, m=2)
    with pytest.raises(ValueError, match="one label per image"):
        cross_val_predict(X, Y, groups=np.arange(11))
    with pytest.raises(ValueError, match="at least 2"):
        cross_val_predict(X, Y, n_folds=1, groups=np.arange(12))
