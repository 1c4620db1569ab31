"""The readout's penalty is chosen on one image per family, its coefficients fitted on all images.

Twins are near-copies of their parents. A criterion that leaves one image out at a time (exact
leave-one-out, GCV) predicts a left-out twin from its parent at any penalty, so with twins in it
the penalty collapses and the surrogate's gradient follows noise (models/readout.py ``select``).
"""

import numpy as np
import pytest

from models.readout import MultiRidgeCV, one_per_group

ALPHAS = np.logspace(-3, 5, 17)


def _with_twins(seed: int, n_clean: int = 60, twins_per_parent: int = 2, p: int = 120, sites: int = 6):
    """Clean images whose responses have a large image-specific part no linear readout explains,
    and twins: each parent's features nudged slightly, the same true response, fresh noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_clean, p))
    W = rng.normal(size=(p, sites)) / np.sqrt(p)
    own = 3.0 * rng.normal(size=(n_clean, sites))  # what a linear readout cannot know of an image
    truth = X @ W + own
    Xt = np.repeat(X, twins_per_parent, axis=0) + 0.01 * rng.normal(size=(n_clean * twins_per_parent, p))
    Yt = np.repeat(truth, twins_per_parent, axis=0)
    Xa = np.vstack([X, Xt])
    Ya = np.vstack([truth, Yt]) + 0.5 * rng.normal(size=(len(Xa), sites))
    groups = np.concatenate([np.arange(n_clean), np.repeat(np.arange(n_clean), twins_per_parent)])
    return Xa, Ya, groups, W


def test_one_per_group_marks_each_familys_first_image():
    mask = one_per_group([7, 3, 7, 7, 9, 3])
    assert mask.tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize("cv", [None, "gcv"])
def test_twins_in_the_criterion_collapse_the_penalty_and_select_prevents_it(cv):
    Xa, Ya, groups, _ = _with_twins(0)
    sel = one_per_group(groups)
    naive = MultiRidgeCV(ALPHAS, cv=cv).fit(Xa, Ya)
    chosen = MultiRidgeCV(ALPHAS, cv=cv).fit(Xa, Ya, select=sel)
    alone = MultiRidgeCV(ALPHAS, cv=cv).fit(Xa[sel], Ya[sel])
    # The penalty is the one the clean images alone choose, far above the naive one.
    np.testing.assert_array_equal(chosen.alpha_, alone.alpha_)
    assert np.all(chosen.alpha_ >= 100 * naive.alpha_), (chosen.alpha_, naive.alpha_)
    # The coefficients are fitted on every image at that penalty.
    for a in np.unique(chosen.alpha_):
        cols = chosen.alpha_ == a
        fixed = MultiRidgeCV([a], cv=cv).fit(Xa, Ya)
        np.testing.assert_allclose(chosen.coef_[:, cols], fixed.coef_[:, cols], rtol=1e-8, atol=1e-10)


def test_with_select_the_readout_predicts_new_images_better():
    """The point of it: on images it never saw, the penalty chosen on independent images wins."""
    Xa, Ya, groups, W = _with_twins(1)
    rng = np.random.default_rng(11)
    sel = one_per_group(groups)
    naive = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa, Ya)
    chosen = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa, Ya, select=sel)
    # On new images, against the linear part the readout can learn.
    Xn = rng.normal(size=(400, Xa.shape[1]))
    models = {"naive": naive, "chosen": chosen}
    err = {k: float(np.mean((m.predict(Xn) - Xn @ W) ** 2)) for k, m in models.items()}
    assert err["chosen"] < 0.8 * err["naive"], err


def test_update_with_select_equals_a_fit_from_scratch():
    """Day 1 has clean images only; day 2 adds twins (not selected) and new clean images."""
    Xa, Ya, groups, _ = _with_twins(2, n_clean=60, twins_per_parent=1)
    sel = one_per_group(groups)
    day1 = np.arange(40)
    day2 = np.setdiff1d(np.arange(len(Xa)), day1)
    inc = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa[day1], Ya[day1], select=sel[day1])
    inc.update(Xa[day2], Ya[day2], select=sel[day2])
    order = np.concatenate([day1, day2])
    full = MultiRidgeCV(ALPHAS, cv="gcv").fit(Xa[order], Ya[order], select=sel[order])
    np.testing.assert_array_equal(inc.alpha_, full.alpha_)
    pf, pi = full.predict(Xa), inc.predict(Xa)
    assert np.max(np.abs(pi - pf)) <= 1e-6 * np.max(np.abs(pf - pf.mean(0)))
    assert inc.select_stats_ is not None and inc.select_stats_.n == int(sel.sum())


def test_select_is_checked():
    Xa, Ya, groups, _ = _with_twins(3, n_clean=10)
    with pytest.raises(ValueError, match="one entry per image"):
        MultiRidgeCV(ALPHAS).fit(Xa, Ya, select=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="not k-fold"):
        MultiRidgeCV(ALPHAS, cv=3).fit(Xa, Ya, select=one_per_group(groups))
