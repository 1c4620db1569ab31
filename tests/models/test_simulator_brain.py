"""Virtual brain: exact sensitivity against brute force, scaling, tuning, torch view."""

import numpy as np
import pytest
import torch

from models.simulator import VirtualBrain, make_clean_images, max_linear_ball_box
from models.simulator.brain import softplus


@pytest.fixture(scope="module")
def brain() -> VirtualBrain:
    return VirtualBrain(seed=0)


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    return make_clean_images(80, seed=5)


def _project_ball_box(z: torch.Tensor, x: torch.Tensor, eps: float, iters: int = 300) -> torch.Tensor:
    """Dykstra's alternating projections of z onto {||d|| <= eps} intersected with {0 <= x + d <= 1}."""
    d, p, q = z.clone(), torch.zeros_like(z), torch.zeros_like(z)
    for _ in range(iters):
        y = d + p
        norm = y.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
        ball = y * torch.clamp(eps / norm, max=1.0)
        p = y - ball
        w = ball + q
        d_new = torch.maximum(torch.minimum(w, 1 - x), -x)
        q = w - d_new
        if torch.max(torch.abs(d_new - d)) < 1e-13:
            return d_new
        d = d_new
    return d


def _pgd(module: torch.nn.Module, x: torch.Tensor, site: int, eps: float, sign: float) -> np.ndarray:
    """Brute-force projected gradient ascent on sign * r_site with a shrinking step."""
    delta = torch.zeros_like(x)
    r0 = module(x)[:, site].detach()
    best = torch.zeros(x.shape[0], dtype=x.dtype)
    step = eps
    for _ in range(40):
        delta.requires_grad_(True)
        obj = sign * module(x + delta)[:, site]
        (grad,) = torch.autograd.grad(obj.sum(), delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            delta = _project_ball_box(delta + step * g, x, eps)
            best = torch.maximum(best, sign * (module(x + delta)[:, site] - r0))
        step *= 0.8
    return best.numpy()


def test_rates_shape_range_and_determinism(brain: VirtualBrain, clean) -> None:
    images, _ = clean
    rates = brain.rates(images)
    assert rates.shape == (80, 32)
    np.testing.assert_allclose(rates, brain.rates(images.astype(np.float64) / 255), rtol=1e-12)
    lo, hi = np.percentile(rates, [1, 99])
    assert 3.0 < lo and hi < 90.0  # realistic IT rates, spikes/s
    assert np.all((brain.spontaneous_rate_ > 2) & (brain.spontaneous_rate_ < 30))
    assert np.all((brain.latency_s_ >= 0.08) & (brain.latency_s_ <= 0.10))
    first, again, other = (VirtualBrain(seed=s, n_sites=4) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.weights_, again.weights_)
    np.testing.assert_array_equal(first.spontaneous_rate_, again.spontaneous_rate_)
    assert not np.allclose(first.weights_, other.weights_)


def test_sites_tuning_differs(brain: VirtualBrain, clean) -> None:
    images, cats = make_clean_images(200, seed=21)
    rates = brain.rates(images)
    sigma = rates.std(axis=0)
    assert np.all(sigma > 2.0)
    cat_means = np.stack([rates[cats == c].mean(axis=0) for c in range(4)])
    preferred = cat_means.argmax(axis=0)
    assert len(set(preferred.tolist())) == 4  # preferences vary across the population
    assert np.mean(preferred == brain.preferred_category_) > 0.75
    # selectivity: preferred category mean is well above the least preferred, in sigma units
    assert np.median((cat_means.max(0) - cat_means.min(0)) / sigma) > 1.0
    corr = np.corrcoef(rates.T)
    assert np.median(np.abs(corr[np.triu_indices(32, 1)])) < 0.9  # sites are not copies


def test_adversarial_part_is_invisible_to_clean_images(brain: VirtualBrain, clean) -> None:
    images, _ = clean
    x = images.reshape(len(images), -1) / 255
    adv_drive_sd = (x @ brain.adversarial_weights_.T).std(axis=0)
    smooth_drive_sd = (x @ brain.smooth_weights_.T).std(axis=0)
    assert np.all(adv_drive_sd < 0.1 * smooth_drive_sd)
    np.testing.assert_allclose(np.linalg.norm(brain.adversarial_weights_, axis=1), brain.sensitivity_)


def test_exact_agrees_with_projected_gradient_ascent() -> None:
    """Brute force on the torch module of a small (16x16) brain, where the box binds hard."""
    small = VirtualBrain(n_sites=3, image_size=16, seed=2)
    images, _ = make_clean_images(3, size=16, seed=9)
    x = images.astype(np.float64) / 255
    x[0, :, :4, :] = 1.0  # saturated patches
    x[1, :, :, :4] = 0.0
    module = small.as_torch_module(dtype=torch.float64)
    xt = torch.as_tensor(x)
    for eps in (0.5, 4.0):
        exact = small.true_sensitivity(x, eps)
        for site in range(3):
            for sign, ref in ((1.0, exact.up), (-1.0, exact.down)):
                found = _pgd(module, xt, site, eps, sign)
                assert np.all(found <= ref[site] * (1 + 1e-6))  # nothing beats the exact optimum
                np.testing.assert_allclose(found, ref[site], rtol=0.01)
    # the box really binds at eps = 4: the box-free value is out of reach, by far on image 1
    a = small.weights_[0]
    ratio = max_linear_ball_box(a, x.reshape(3, -1), 4.0) / (4.0 * np.linalg.norm(a))
    assert np.all(ratio < 0.999) and ratio.min() < 0.9


def test_optimal_perturbation_is_feasible_and_attains_the_maximum(brain: VirtualBrain, clean) -> None:
    images, _ = clean
    x = images[:6].astype(np.float64) / 255
    for eps, direction in ((2.0, "up"), (30.0, "down")):
        delta = brain.optimal_perturbation(x, eps, site=3, direction=direction)
        assert np.all(np.linalg.norm(delta.reshape(6, -1), axis=1) <= eps * (1 + 1e-9))
        assert (x + delta).min() >= -1e-12 and (x + delta).max() <= 1 + 1e-12
        change = brain.rates(np.clip(x + delta, 0, 1))[:, 3] - brain.rates(x)[:, 3]
        s = brain.true_sensitivity(x, eps)
        expected = s.up[3] if direction == "up" else -s.down[3]
        np.testing.assert_allclose(change, expected, rtol=1e-9)


def test_box_free_closed_form_when_box_does_not_bind(brain: VirtualBrain) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, size=(5, 3, 64, 64))
    eps = 1.5  # per-pixel steps stay far below the 0.3 margin
    s = brain.true_sensitivity(x, eps)
    u = brain.drive(x).T  # (n_sites, n_images)
    step = eps * np.linalg.norm(brain.weights_, axis=1)[:, None]
    gain = brain.gain_[:, None]
    np.testing.assert_allclose(s.up, gain * (softplus(u + step) - softplus(u)), rtol=1e-10)
    np.testing.assert_allclose(s.down, gain * (softplus(u) - softplus(u - step)), rtol=1e-10)
    np.testing.assert_allclose(s.max, np.maximum(s.up, s.down))
    # and the box does bind, lowering the optimum, on a nearly saturated image
    a = brain.weights_[0]
    corner = (a > 0).astype(np.float64)[None] * 0.98 + 0.01
    assert max_linear_ball_box(a, corner, eps) < eps * np.linalg.norm(a) * 0.9


def test_sensitivity_monotone_in_eps_and_scales_with_knob(clean) -> None:
    images, _ = clean
    eps = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    low = VirtualBrain(n_sites=6, sensitivity=0.1, seed=4)
    high = VirtualBrain(n_sites=6, sensitivity=0.4, seed=4)
    np.testing.assert_allclose(low.smooth_weights_, high.smooth_weights_)  # only the knob differs
    s_low = low.true_sensitivity(images[:20], eps)
    s_high = high.true_sensitivity(images[:20], eps)
    assert s_low.up.shape == (7, 6, 20)
    assert np.all(s_low.max[0] == 0)
    for s in (s_low, s_high):
        assert np.all(np.diff(s.up, axis=0) > 0) and np.all(np.diff(s.down, axis=0) > 0)
    assert np.all(s_high.max[1:] > s_low.max[1:])
    # small-eps slope: gain * softplus'(u) * ||a||, ||a||^2 = ||smooth||^2 + knob^2
    ratio = s_high.mean[1] / s_low.mean[1]
    smooth = np.linalg.norm(low.smooth_weights_, axis=1)[:, None]
    predicted = np.sqrt(smooth**2 + 0.4**2) / np.sqrt(smooth**2 + 0.1**2)
    np.testing.assert_allclose(ratio, np.broadcast_to(predicted, ratio.shape), rtol=0.05)


def test_default_normalised_sensitivity_is_realistic(brain: VirtualBrain, clean) -> None:
    images, _ = clean
    eps = np.array([0.5, 1.0, 3.0, 4.0])
    s = brain.true_normalised_sensitivity(images[:40], eps, clean_images=images).per_site()
    assert s.shape == (4, 32)
    median = np.median(s, axis=1)
    assert 0.1 < median[0] < 0.4
    assert 0.3 < median[1] < 1.0  # paper's IT at eps 1-3: about 0.3-1
    assert 0.8 < median[2] < 2.0
    assert np.all(s[3] < 3.0)
    # population spread in sensitivity follows the knob
    assert (
        np.corrcoef(
            s[1], np.sqrt(np.linalg.norm(brain.smooth_weights_, axis=1) ** 2 + brain.sensitivity_**2)
        )[0, 1]
        > 0.5
    )


def test_torch_module_matches_numpy(brain: VirtualBrain, clean) -> None:
    images, _ = clean
    x = images[:5].astype(np.float64) / 255
    m64 = brain.as_torch_module(dtype=torch.float64)
    np.testing.assert_allclose(m64(torch.as_tensor(x)).numpy(), brain.rates(x), rtol=1e-10)
    m32 = brain.as_torch_module()
    xt = torch.as_tensor(x, dtype=torch.float32).requires_grad_(True)
    out = m32(xt)
    assert out.dtype == torch.float32 and out.shape == (5, 32)
    np.testing.assert_allclose(out.detach().numpy(), brain.rates(x), rtol=1e-4)
    out[:, 2].sum().backward()
    assert xt.grad is not None and torch.all(torch.isfinite(xt.grad)) and xt.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        m32(torch.zeros(1, 3, 32, 32))


def test_input_validation(brain: VirtualBrain) -> None:
    with pytest.raises(ValueError):
        brain.rates(np.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError):
        brain.rates(np.full((1, 3, 64, 64), 2.0))
    with pytest.raises(ValueError):
        VirtualBrain(n_sites=3, sensitivity=np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        brain.true_normalised_sensitivity(np.zeros((1, 3, 64, 64)), 1.0)
