"""Anti-aliased pooling (models.smooth_pool) and the ``smooth16`` candidate built on it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.backbones import BACKBONES
from models.readout import MultiRidgeCV
from models.simulator import make_brain, make_clean_images
from models.smooth_pool import SmoothPool2d, smooth_pool_matrix
from worker.candidates import resolve


@pytest.mark.parametrize("n_in", [64, 224, 50])
def test_no_blur_is_adaptive_average_pooling(n_in):
    x = torch.rand(2, 3, n_in, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(n_in))
    pooled = SmoothPool2d(16, blur=0.0)(x)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, 16), rtol=0, atol=1e-14)


def test_rows_sum_to_one_so_a_uniform_image_pools_to_itself():
    a = smooth_pool_matrix(224, 16, 0.75)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(16, dtype=torch.float64))
    assert (a >= 0).all()
    grey = torch.full((1, 3, 224, 224), 0.37, dtype=torch.float64)
    torch.testing.assert_close(SmoothPool2d(16)(grey), torch.full((1, 3, 16, 16), 0.37, dtype=torch.float64))


def _site_gradients(model, x: torch.Tensor, n_sites: int) -> torch.Tensor:
    """(images, sites, pixels): each site's gradient at each image."""
    at = x.clone().requires_grad_(True)
    out = model(at)
    grads = [torch.autograd.grad(out[:, i].sum(), at, retain_graph=True)[0] for i in range(n_sites)]
    grads = [g.flatten(1) for g in grads]
    return torch.stack(grads, 1)


def _roughness(g: torch.Tensor) -> float:
    """Squared horizontal and vertical pixel differences over the squared gradient."""
    dx, dy = g.diff(dim=-1), g.diff(dim=-2)
    return float((dx.square().sum() + dy.square().sum()) / g.square().sum())


def test_a_readouts_gradient_has_no_block_edges():
    """The reason for the blur: a linear readout's gradient is the pooling's adjoint of its
    weights; with box pooling it jumps at every block edge, with the blur it is smooth."""
    w = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = {}
    for blur in (0.0, 0.75):
        x = torch.rand(1, 3, 64, 64, dtype=torch.float64, requires_grad=True)
        (SmoothPool2d(16, blur)(x) * w).sum().backward()
        grads[blur] = x.grad
    assert _roughness(grads[0.75]) < 0.2 * _roughness(grads[0.0])


@pytest.mark.parametrize("family", ["natural", "mix50"])
def test_blurred_pixels_point_closer_to_a_linear_brains_gradient(family):
    """On the simulator's linear families (not built for this model) a ridge readout on blurred
    pooled pixels agrees better with the brain's exact gradient than one on block averages."""
    gains = []
    for seed in (0, 1, 2):
        brain = make_brain(family, n_sites=8, image_size=32, seed=seed)
        images, _ = make_clean_images(300, size=32, seed=seed + 10)
        x = torch.from_numpy(np.asarray(images)).double() / 255.0  # (N, 3, H, W) uint8
        rates = brain.rates(x.numpy())
        truth = _site_gradients(brain.as_torch_module(torch.float64), x[:16], 8)
        cosine = {}
        for blur in (0.0, 0.75):
            pool = BACKBONES["pixels"](size=8, blur=blur).double().pool
            readout = MultiRidgeCV(np.logspace(-3, 5, 17)).fit(pool(x).flatten(1).detach().numpy(), rates)
            w = torch.from_numpy(np.asarray(readout.coef_)).double()
            w = w if w.shape[0] == 3 * 8 * 8 else w.T
            grad = _site_gradients(lambda im, pool=pool, w=w: pool(im).flatten(1) @ w, x[:16], 8)
            cosine[blur] = F.cosine_similarity(grad, truth, dim=2).mean().item()
        gains.append(cosine[0.75] - cosine[0.0])
    assert min(gains) > 0.0, gains
    assert np.mean(gains) > 0.02, gains


def test_smooth16_candidate_and_bad_blur():
    c = resolve("smooth16")
    assert (c.backbone, c.layer, c.kwargs) == ("pixels", "pool", {"size": 16, "blur": 0.75})
    net = BACKBONES[c.backbone](**c.kwargs)
    assert isinstance(net.pool, SmoothPool2d)
    with pytest.raises(ValueError, match="blur"):
        SmoothPool2d(16, blur=-1.0)
    with pytest.raises(ValueError, match="positive sizes"):
        smooth_pool_matrix(0, 16, 0.75)
