"""Brain families: registry, exact truth against brute force, rates, shares, the V1 attack reference."""

import numpy as np
import pytest
import torch

from models.simulator import FAMILIES, make_brain, make_clean_images, natural_share
from models.simulator.natural import BlurBrain
from models.simulator.v1 import V1Brain
from models.simulator.whitebox import AttackConfig, attack_cases, budget_gain
from tests.models.test_simulator_brain import _pgd

LINEAR = ("orthogonal", "natural", "mix25", "mix50", "blur")


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_clean_images(60, seed=5)[0]


def test_registry_builds_every_family_and_refuses_unknown_ones() -> None:
    assert set(FAMILIES) >= {"orthogonal", "natural", "mix25", "mix50", "blur", "v1", "v1fine", "v1coarse"}
    for family in FAMILIES:
        brain = make_brain(family, n_sites=3, image_size=32, seed=1)
        assert brain.family == family if family not in ("mix25", "mix50") else brain.family == "natural"
        assert (brain.n_sites, brain.image_size) == (3, 32)
        assert isinstance(brain.as_torch_module(), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown brain family 'retina'.*orthogonal"):
        make_brain("retina")


@pytest.mark.parametrize("family", [*LINEAR, "v1", "v1fine", "v1coarse", "v1suppress"])
def test_rates_are_realistic_and_deterministic_by_seed(family: str, clean: np.ndarray) -> None:
    brain = make_brain(family, n_sites=16, seed=3)
    rates = brain.rates(clean)
    assert rates.shape == (60, 16)
    assert 2.0 < rates.min() and rates.max() < 170.0, (rates.min(), rates.max())
    assert 8.0 < np.median(rates) < 40.0
    assert np.all(rates.std(axis=0) > 1.0)  # every site is driven by clean images
    np.testing.assert_array_equal(rates, make_brain(family, n_sites=16, seed=3).rates(clean))
    assert not np.allclose(rates, make_brain(family, n_sites=16, seed=4).rates(clean))
    spikes = brain.simulate_spikes(clean[:5], np.arange(5) * 0.3 + 1.0, np.random.default_rng(0))
    assert spikes.site_index.max() < 16 and spikes.time_s.size > 0


def test_natural_shares_follow_the_construction() -> None:
    assert natural_share("orthogonal") == 0.0
    assert natural_share("natural") == 1.0
    assert natural_share("mix25") == 0.75
    assert natural_share("mix50") == 0.5
    assert 0.5 <= natural_share("blur") <= 1.0
    assert natural_share("v1") == natural_share("v1fine") == natural_share("v1coarse") == 1.0
    assert natural_share("v1suppress") == 1.0
    brain = make_brain("mix50", n_sites=8, seed=2)
    np.testing.assert_allclose(brain.natural_share_per_site_, 0.5, atol=1e-9)  # every site, not on average
    with pytest.raises(ValueError, match="unknown brain family"):
        natural_share("retina")


def test_held_out_energy_families_prefer_other_scales_than_v1() -> None:
    """``v1fine`` and ``v1coarse`` are not ``v1`` under another name: their preferred spatial
    frequencies lie above and below its range (where its surrogates were shaped)."""
    v1, fine, coarse = (make_brain(f, n_sites=24, seed=0) for f in ("v1", "v1fine", "v1coarse"))
    assert (fine.n_subunits, coarse.n_subunits) == (4, v1.n_subunits)
    assert np.median(fine.preferred_cycles_) > 1.5 * np.median(v1.preferred_cycles_)
    assert np.median(coarse.preferred_cycles_) < 0.7 * np.median(v1.preferred_cycles_)
    assert fine.preferred_cycles_.max() <= 8.0 and coarse.preferred_cycles_.min() >= 0.7


def test_suppressive_subunits_are_orthogonal_and_lower_the_rate() -> None:
    """``v1suppress`` is ``v1`` with a third of each site's subunits turned 90 degrees and pooled
    with negative weights: adding a grating at a site's orthogonal orientation to one at its
    preferred orientation lowers its rate there far more than in ``v1``, where only the shared
    divisive normalisation lowers it."""
    v1, sup = make_brain("v1", n_sites=12, seed=0), make_brain("v1suppress", n_sites=12, seed=0)
    k = sup.n_subunits
    assert np.all(sup.pool_weights_[:, : k - 4] > 0) and np.all(sup.pool_weights_[:, k - 4 :] < 0)
    assert np.all(v1.pool_weights_ > 0)
    np.testing.assert_array_equal(sup.preferred_theta_, v1.preferred_theta_)  # the same draws

    coords = np.arange(64) - 31.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    def grating(theta: float, cycles: float) -> np.ndarray:
        wave = np.cos(2 * np.pi * cycles * (np.cos(theta) * xx + np.sin(theta) * yy) / 64)
        return wave[None].repeat(3, axis=0)

    falls = []
    for brain in (v1, sup):
        site_change = []
        for i in range(brain.n_sites):
            theta, cycles = brain.preferred_theta_[i], brain.preferred_cycles_[i]
            preferred = 0.5 + 0.2 * grating(theta, cycles)
            plaid = preferred + 0.2 * grating(theta + np.pi / 2, cycles)
            r = brain.rates(np.stack([preferred, plaid]).clip(0, 1))
            site_change.append(r[1, i] - r[0, i])
        falls.append(np.median(site_change))
    assert falls[1] < 3 * min(falls[0], 0.0) - 5.0, falls


@pytest.mark.parametrize("family", ["natural", "mix50", "blur"])
def test_exact_truth_agrees_with_brute_force(family: str) -> None:
    """Projected gradient ascent on the torch module of a 16x16 population never beats the exact value."""
    brain = make_brain(family, n_sites=3, image_size=16, seed=2)
    images, _ = make_clean_images(3, size=16, seed=9)
    x = images.astype(np.float64) / 255
    x[0, :, :4, :] = 1.0  # saturated patches: the box binds
    module = brain.as_torch_module(dtype=torch.float64)
    for eps in (0.5, 3.0):
        exact = brain.true_sensitivity(x, eps)
        cases = brain.true_sensitivity_cases(np.repeat(x, 3, axis=0), np.tile(np.arange(3), 3), eps)
        np.testing.assert_allclose(cases.up, exact.up.T.ravel(), rtol=1e-12)
        for site in range(3):
            for sign, ref in ((1.0, exact.up), (-1.0, exact.down)):
                found = _pgd(module, torch.as_tensor(x), site, eps, sign)
                assert np.all(found <= ref[site] * (1 + 1e-6))
                np.testing.assert_allclose(found, ref[site], rtol=0.01)


def test_blur_population_is_linear_nonlinear_on_the_low_resolution_image(clean: np.ndarray) -> None:
    brain = BlurBrain(n_sites=4, seed=1)
    x = clean[:6].astype(np.float64) / 255
    low = brain.see(x)
    assert low.shape == (6, 3 * 16 * 16)
    np.testing.assert_allclose(
        x.reshape(6, -1) @ brain.weights_.T, low @ brain.low_res_weights_.T, rtol=1e-10, atol=1e-10
    )
    # Fine detail the optics remove moves nothing: a checkerboard at the pixel scale.
    checker = (np.indices((64, 64)).sum(axis=0) % 2 - 0.5)[None].repeat(3, axis=0).ravel()
    assert np.abs(brain.weights_ @ checker).max() < 1e-3 * np.abs(brain.weights_ @ np.abs(checker)).max()


@pytest.mark.parametrize("family", ["natural", "mix50", "blur"])
def test_normalised_sensitivity_is_comparable_to_the_orthogonal_brain(family: str, clean: np.ndarray) -> None:
    """Median over sites at eps 1 / 4: orthogonal 0.41 / 1.92 (brain.py doc); these within 0.6-1.6x."""
    brain = make_brain(family, n_sites=16, seed=0)
    s = brain.true_normalised_sensitivity(clean[:20], np.array([1.0, 4.0]), clean_images=clean).max
    med = np.median(s.mean(axis=-1), axis=1)
    assert 0.25 < med[0] < 0.7 and 1.2 < med[1] < 3.2, med


def test_v1_module_matches_rates_and_site_modules(clean: np.ndarray) -> None:
    brain = V1Brain(n_sites=5, seed=0)
    x = torch.as_tensor(clean[:4].astype(np.float32) / 255)
    with torch.no_grad():
        full = brain.as_torch_module()(x).numpy()
        one = brain.site_module(3)(x).numpy()
    np.testing.assert_allclose(full, brain.rates(clean[:4]), rtol=1e-4)
    np.testing.assert_allclose(one[:, 0], full[:, 3], rtol=1e-5)


def test_v1_whitebox_beats_random_and_gradient_attacks_and_is_converged() -> None:
    """The attack reference is >= a plain PGD and random directions, and a doubled attack adds ~nothing."""
    brain = V1Brain(n_sites=3, image_size=32, seed=1)
    images, _ = make_clean_images(2, size=32, seed=3)
    x = images.astype(np.float64) / 255
    eps = 1.0
    xi, sites = np.repeat(x, 3, axis=0), np.tile(np.arange(3), 2)
    ref = brain.true_sensitivity_cases(xi, sites, eps)
    module = brain.as_torch_module(dtype=torch.float64)
    rng = np.random.default_rng(0)
    r0 = brain.rates(x)
    for k, (img, site) in enumerate(zip(np.repeat(np.arange(2), 3), sites, strict=True)):
        for sign, value in ((1.0, ref.up[k]), (-1.0, ref.down[k])):
            pgd = _pgd(module, torch.as_tensor(x[img : img + 1]), int(site), eps, sign)[0]
            assert value >= pgd * (1 - 1e-3), (k, sign, value, pgd)
        d = rng.standard_normal((64, *x.shape[1:]))
        d *= eps / np.linalg.norm(d.reshape(64, -1), axis=1)[:, None, None, None]
        rand = np.abs(brain.rates(np.clip(x[img] + d, 0, 1))[:, site] - r0[img, site]).max()
        assert max(ref.up[k], ref.down[k]) > 3 * rand
    gain = budget_gain(brain, xi, sites, np.full(6, eps), AttackConfig())
    assert gain["max_gain"] < 1e-3, gain
    cached = brain.true_sensitivity_cases(xi, sites, eps)  # served from the cache, identical
    np.testing.assert_array_equal(cached.up, ref.up)


def test_attack_cases_reaches_the_exact_optimum_of_a_linear_family() -> None:
    """The same attack on an exact family: the engine is strong enough to be a reference."""
    brain = make_brain("natural", n_sites=3, image_size=16, seed=2)
    images, _ = make_clean_images(2, size=16, seed=9)
    x = images.astype(np.float64) / 255
    xi, sites = np.repeat(x, 3, axis=0), np.tile(np.arange(3), 2)
    exact = brain.true_sensitivity_cases(xi, sites, 2.0)
    found = attack_cases(brain, xi, sites, np.full(6, 2.0))
    assert np.all(found.max <= exact.max * (1 + 1e-4))
    np.testing.assert_allclose(found.max, exact.max, rtol=0.02)
