"""Site continuity: drift detection on the reference set and the nightly quality gate."""

import numpy as np
import pytest

from models.tracking import detect_drift, quality_gate


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


def _day(rng, tuning, noise_sd, n_rep=5):
    return tuning[..., None] + rng.normal(size=tuning.shape + (n_rep,)) * noise_sd


def test_flags_shifted_and_retuned_sites_only(rng):
    n_img, n_sites = 40, 12
    tuning = rng.gamma(4.0, 2.0, size=(n_img, n_sites))
    noise = 2.0
    baseline = _day(rng, tuning, noise)
    today_tuning = tuning.copy()
    today_tuning[:, 3] += 3.0  # offset shift of one site
    today_tuning[:, 7] = rng.permutation(tuning[:, 7])  # same rates, different preferred images
    today = _day(rng, today_tuning, noise)
    today[0, :, :2] = np.nan  # a few missing repeats are fine

    report = detect_drift(today, baseline)
    assert report.flagged[3] and report.flagged[7]
    assert not report.flagged[[i for i in range(n_sites) if i not in (3, 7)]].any()
    assert "changed beyond noise" in report.reasons[3]
    assert "tuning correlation" in report.reasons[7]
    assert report.reasons[0] == "stable"
    assert report.tuning_r[0] > 0.8 and report.expected_r[0] > 0.8

    # The (mean, se) baseline form gives the same decision.
    n = np.isfinite(baseline).sum(2)
    mean = baseline.mean(2)
    se = np.sqrt(((baseline - mean[..., None]) ** 2).sum((0, 2)) / (n - 1).sum(0) / n)
    report2 = detect_drift(today, (mean, se))
    np.testing.assert_array_equal(report2.flagged, report.flagged)
    np.testing.assert_allclose(report2.statistic, report.statistic)


def test_false_alarm_rate_is_controlled(rng):
    tuning = rng.gamma(3.0, 3.0, size=(30, 200))
    report = detect_drift(_day(rng, tuning, 3.0, n_rep=4), _day(rng, tuning, 3.0, n_rep=4), alpha=0.05)
    assert report.flagged.sum() <= 2


def test_untestable_site_is_flagged(rng):
    tuning = rng.normal(size=(10, 2)) + 5
    today = _day(rng, tuning, 1.0)
    today[:8, 1] = np.nan
    report = detect_drift(today, _day(rng, tuning, 1.0))
    assert not report.flagged[0] and report.flagged[1]
    assert report.reasons[1].startswith("untestable")
    with pytest.raises(ValueError):
        detect_drift(today[:5], _day(rng, tuning, 1.0))


def test_quality_gate():
    passed, reasons = quality_gate(np.array([0.9, 0.3, np.nan, 0.5]), threshold=0.5)
    np.testing.assert_array_equal(passed, [True, False, False, True])
    assert "below threshold" in reasons[1] and "no reliability" in reasons[2]
