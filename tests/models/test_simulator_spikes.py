"""Spike simulation: window counts, spontaneous firing, fixation breaks, speed."""

import time

import numpy as np
import pytest

from models.simulator import (
    VirtualBrain,
    expected_window_count,
    make_clean_images,
    mark_fixation_breaks,
    simulate_presentation_spikes,
)


def _window_counts(spikes, onsets: np.ndarray, n_sites: int, window: tuple[float, float]) -> np.ndarray:
    """Spike counts (n_presentations, n_sites) in [onset + w0, onset + w1)."""
    out = np.empty((onsets.size, n_sites), dtype=np.int64)
    for i, times in enumerate(spikes.per_site(n_sites)):
        out[:, i] = np.searchsorted(times, onsets + window[1]) - np.searchsorted(times, onsets + window[0])
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_window_counts_match_rate_times_overlap(rng: np.random.Generator) -> None:
    n_pres, n_sites = 4000, 4
    site_rates = np.array([4.0, 20.0, 50.0, 80.0])  # site 0 is below spontaneous: thinning path
    latency = np.array([0.07, 0.08, 0.09, 0.10])
    spont = np.array([10.0, 5.0, 8.0, 12.0])
    rates = np.tile(site_rates, (n_pres, 1))
    onsets = rng.permutation(np.arange(n_pres) * 0.25)  # any order; 250 ms SOA
    spikes = simulate_presentation_spikes(rates, onsets, rng, latency_s=latency, spontaneous_rate=spont)
    assert np.all(np.diff(spikes.time_s) >= 0)
    counts = _window_counts(spikes, onsets, n_sites, (0.07, 0.17))
    expected = expected_window_count(site_rates, latency_s=latency, spontaneous_rate=spont)
    # with latency 0.07 the window holds exactly rate * 0.1 s
    assert expected[0] == pytest.approx(0.4)
    se = np.sqrt(expected / n_pres)
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 4 * se)
    fano = counts.var(axis=0) / counts.mean(axis=0)
    assert np.all(np.abs(fano - 1.0) < 0.1)  # Poisson
    # before the response (0-60 ms after onset) only spontaneous firing
    pre = _window_counts(spikes, onsets, n_sites, (0.0, 0.06))
    expected_pre = spont * 0.06
    assert np.all(np.abs(pre.mean(axis=0) - expected_pre) < 4 * np.sqrt(expected_pre / n_pres))


def test_expected_window_count_overlap() -> None:
    rates = np.array([[30.0, 30.0, 30.0]])
    got = expected_window_count(
        rates, (0.07, 0.17), latency_s=np.array([0.07, 0.09, 0.2]), duration_s=0.1, spontaneous_rate=5.0
    )
    np.testing.assert_allclose(got, [[3.0, 30 * 0.08 + 5 * 0.02, 0.5]])


def test_fixation_breaks_drop_the_response(rng: np.random.Generator) -> None:
    n_pres = 3000
    ok = mark_fixation_breaks(n_pres, rng, rate=0.3)
    rates = np.full((n_pres, 2), 60.0)
    onsets = np.arange(n_pres) * 0.3
    spikes = simulate_presentation_spikes(
        rates, onsets, rng, latency_s=0.07, spontaneous_rate=6.0, fixation_ok=ok
    )
    counts = _window_counts(spikes, onsets, 2, (0.07, 0.17))
    assert counts[ok].mean() == pytest.approx(6.0, rel=0.05)
    assert counts[~ok].mean() == pytest.approx(0.6, rel=0.15)


def test_mark_fixation_breaks_rate_runs_and_seed() -> None:
    ok = mark_fixation_breaks(50_000, 3, rate=0.1)
    assert 1 - ok.mean() == pytest.approx(0.1, abs=0.01)
    np.testing.assert_array_equal(ok, mark_fixation_breaks(50_000, 3, rate=0.1))
    bursty = mark_fixation_breaks(50_000, 3, rate=0.1, mean_run=4.0)
    assert 1 - bursty.mean() == pytest.approx(0.1, abs=0.02)
    broken = (~bursty).astype(int)
    starts = np.sum(np.diff(broken) == 1)
    assert broken.sum() / starts == pytest.approx(4.0, rel=0.15)  # mean run length
    assert mark_fixation_breaks(100, 0, rate=0.0).all()
    with pytest.raises(ValueError):
        mark_fixation_breaks(10, 0, rate=1.0)


def test_rate_noise_raises_fano(rng: np.random.Generator) -> None:
    rates = np.full((3000, 1), 50.0)
    onsets = np.arange(3000) * 0.3
    spikes = simulate_presentation_spikes(
        rates, onsets, rng, latency_s=0.07, spontaneous_rate=5.0, rate_cv=0.3
    )
    counts = _window_counts(spikes, onsets, 1, (0.07, 0.17))[:, 0]
    assert counts.mean() == pytest.approx(5.0, rel=0.05)
    assert counts.var() / counts.mean() > 1.3  # 1 + mean * cv^2 = 1.45


def test_a_day_simulates_fast(rng: np.random.Generator) -> None:
    n_pres, n_sites = 5000, 32
    rates = rng.uniform(5, 80, size=(n_pres, n_sites))
    onsets = np.arange(n_pres) * 0.2
    latency = rng.uniform(0.08, 0.1, n_sites)
    elapsed = []
    for _ in range(2):  # best of two, so that a busy machine does not fail the test
        start = time.perf_counter()
        spikes = simulate_presentation_spikes(rates, onsets, rng, latency_s=latency)
        elapsed.append(time.perf_counter() - start)
    assert min(elapsed) < 1.0  # measured about 0.3 s on one core
    per_site = spikes.per_site(n_sites)
    assert sum(len(t) for t in per_site) == spikes.time_s.size
    assert all(np.all(np.diff(t) >= 0) for t in per_site)


def test_brain_spikes_follow_true_rates(rng: np.random.Generator) -> None:
    brain = VirtualBrain(n_sites=6, seed=3)
    images, _ = make_clean_images(4, seed=2)
    shown = np.repeat(np.arange(4), 600)
    onsets = np.arange(shown.size) * 0.25
    spikes = brain.simulate_spikes(images[shown], onsets, rng)
    counts = _window_counts(spikes, onsets, 6, (0.07, 0.17))
    means = np.stack([counts[shown == k].mean(axis=0) for k in range(4)])
    expected = expected_window_count(
        brain.rates(images), latency_s=brain.latency_s_, spontaneous_rate=brain.spontaneous_rate_
    )
    assert np.all(np.abs(means - expected) < 4 * np.sqrt(expected / 600))


def test_input_validation(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError):
        simulate_presentation_spikes(np.ones((3, 2)), np.zeros(4), rng)
    with pytest.raises(ValueError):
        simulate_presentation_spikes(-np.ones((3, 2)), np.zeros(3), rng)
    with pytest.raises(ValueError):
        simulate_presentation_spikes(np.ones((3, 2)), np.zeros(3), rng, latency_s=np.ones(3))
    empty = simulate_presentation_spikes(np.zeros((0, 2)), np.zeros(0), rng)
    assert empty.time_s.size == 0
