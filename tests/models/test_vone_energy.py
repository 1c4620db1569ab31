"""The coarse complex-cell energy candidate: a gradient that follows the image's phase."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.encoder import SiteEncoder
from models.features import FeatureExtractor
from models.readout import MultiRidgeCV
from models.simulator import make_brain
from models.simulator.images import make_clean_images
from models.smooth_pool import SmoothPool2d
from models.vone import vone_energy
from worker.candidates import resolve


def _oriented(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every channel but the 3 low-pass colour ones (the energies)."""
    return net(x)[:, 3:]


def test_energies_are_even_in_the_oriented_part_so_the_gradient_flips_with_phase() -> None:
    net = vone_energy().eval()
    torch.manual_seed(0)
    grey = torch.full((1, 3, 48, 48), 0.5)
    d = 0.1 * torch.randn(1, 3, 48, 48)
    plus, minus = _oriented(net, grey + d), _oriented(net, grey - d)
    # Zero-mean Gabors do not see the grey: the energy of grey + d is the energy of d, the same
    # for grey - d (what makes a complex cell phase-invariant).
    assert torch.allclose(plus, minus, rtol=1e-4, atol=1e-6) and plus.abs().max() > 0
    # A fixed readout's gradient is then image-dependent: opposite at the two images, where
    # any linear pixel model's gradient would be the same.
    w = torch.randn(plus.shape[1:])
    grads = []
    for x in (grey + d, grey - d):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((_oriented(net, x) * w).sum(), x)
        grads.append(g)
    assert torch.allclose(grads[0], -grads[1], rtol=1e-3, atol=1e-7) and grads[0].abs().sum() > 0


def test_images_are_seen_at_the_base_size_so_large_images_cost_the_same() -> None:
    net = vone_energy().eval()
    x = torch.rand(2, 3, 224, 224)
    small = SmoothPool2d(48, blur=0.75)(x)  # blurred, then averaged down to the base size
    out = net(x)
    assert torch.allclose(out, net(small), atol=1e-5)
    # Four octaves (wavelengths 4.5 to 36 pixels of 48: 1.3 to 10.7 cycles per image), luminance
    # only at the finest, luminance and two opponent axes above, 8 orientations, a 2x2 grid.
    assert out.shape == (2, 3 + 8 + 3 * 24, 2, 2)
    assert resolve("vone_energy").backbone == "vone_energy"


def test_a_large_images_gradient_has_no_block_edges_from_the_downsampling() -> None:
    """At 224 pixels each base-size pixel averages a 4.7-pixel block; without the blur the
    gradient is constant over those blocks and jumps between them (energy no smooth site uses)."""
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    roughness = {}
    for blur in (0.0, 0.75):
        at = x.clone().requires_grad_(True)
        _oriented(vone_energy(blur=blur).eval(), at)[:, ::7].sum().backward()
        g = at.grad
        steps = g.diff(dim=-1).square().sum() + g.diff(dim=-2).square().sum()
        roughness[blur] = float(steps / g.square().sum())
    assert roughness[0.75] < 0.5 * roughness[0.0], roughness


def test_energy_surrogate_points_where_an_energy_model_brain_does_and_pixels_cannot() -> None:
    """On a small V1-like energy population (nonlinear, image-dependent gradients), a ridge on
    the energies agrees with the brain's gradient far better than a ridge on 16x16 pixels."""
    torch.manual_seed(0)
    brain = make_brain("v1", n_sites=4, image_size=48, seed=1)
    images, _ = make_clean_images(260, size=48, seed=7)
    rates = brain.rates(images)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)
    x_tr, x_te, y = x[:240], x[240:], rates[:240]
    truth = brain.as_torch_module().float()

    def cosine(backbone: torch.nn.Module, layer: str) -> float:
        with torch.no_grad():
            f = FeatureExtractor(backbone, layer, "flatten")(x_tr).flatten(1).double().numpy()
        model = SiteEncoder.from_readout(
            backbone, layer, "flatten", MultiRidgeCV().fit(f, y), [f"s{i}" for i in range(4)]
        )
        cos = []
        for i in range(4):
            xs = x_te.clone().requires_grad_(True)
            (gs,) = torch.autograd.grad(model(xs)[:, i].sum(), xs)
            xb = x_te.clone().requires_grad_(True)
            (gb,) = torch.autograd.grad(truth(xb)[:, i].sum(), xb)
            cos.append(F.cosine_similarity(gs.flatten(1), gb.flatten(1)).numpy())
        return float(np.median(cos))

    from models.backbones import build_backbone

    energy = cosine(vone_energy().eval(), "output")
    pixels = cosine(build_backbone("pixels", None, size=16).eval(), "pool")
    assert energy > 0.15 and energy > pixels + 0.1, (energy, pixels)


def test_colour_pairs_make_a_cell_of_any_colour_a_linear_function_of_the_features() -> None:
    """With the cross energies, the energy of a complex cell tuned to an arbitrary colour direction
    ``c`` (in the front end's luminance/opponent axes) is ``c^T M c``, linear in the six entries
    ``M`` of each level, position and orientation. The cell is built independently: recolour the
    image so that its luminance axis carries ``c . axes(x)``, and read the luminance energy."""
    from models.vone import _OPPONENT

    net = vone_energy(grid=4, colour_pairs=True).eval()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    c = torch.tensor([0.6, -0.7, 0.4])
    opp = _OPPONENT.double()  # rows: luminance, red-green, blue-yellow (orthonormal)
    mix = torch.eye(3, dtype=torch.float64)
    mix[0] = c.double()  # the recoloured image's luminance axis is c . axes(x)
    recolour = (opp.T @ mix @ opp).float()
    x_c = torch.einsum("ij,bjhw->bihw", recolour, x)
    feats, feats_c = net(x), net(x_c)
    k = 8
    assert feats.shape == (2, 3 + k + 3 * 6 * k, 4, 4)  # 3 coarse levels of 6 entries x 8 orientations
    pairs = torch.stack([c[0] * c[1], c[0] * c[2], c[1] * c[2]])
    for level in range(3):
        block = feats[:, 3 + k + level * 6 * k : 3 + k + (level + 1) * 6 * k].reshape(2, 6, k, 4, 4)
        diag, cross = block[:, :3], block[:, 3:]
        off_diagonal = 2 * torch.einsum("a,bakhw->bkhw", pairs, cross)
        quadratic = torch.einsum("a,bakhw->bkhw", c**2, diag) + off_diagonal
        lum_energy = feats_c[:, 3 + k + level * 6 * k : 3 + k + level * 6 * k + k]
        assert torch.allclose(quadratic, lum_energy, rtol=1e-3, atol=1e-5), (
            (quadratic - lum_energy).abs().max()
        )
    # Without the cross entries no weighting of the diagonal gives it: the off-diagonal part is large.
    assert off_diagonal.abs().max() > 0.05 * lum_energy.abs().max()


def test_global_cells_are_unit_norm_quadrature_pairs_blind_to_uniform_light() -> None:
    from models.vone import global_gabor_pairs

    bank = global_gabor_pairs(32, 4, [48.0, 96.0], 3).double()
    assert bank.shape == (2, 2, 4, 3, 3, 32 * 32)
    assert torch.allclose(bank.norm(dim=-1), torch.ones(()).double(), atol=1e-5)
    assert bank.sum(dim=-1).abs().max() < 1e-4  # a uniform image moves no cell
    # At the centre even and odd filters are orthogonal (a quadrature pair); off centre the
    # border cuts the odd-symmetric envelope, as it does a receptive field larger than the image.
    assert (bank[:, 0, :, 1, 1] * bank[:, 1, :, 1, 1]).sum(-1).abs().max() < 1e-6


def test_global_octaves_add_oriented_cells_for_gratings_coarser_than_the_pyramid() -> None:
    """A grating of 0.67 cycles per image is coarser than the pyramid's coarsest octave (1.3):
    the whole-image cells of its orientation respond to it, those of the orthogonal orientation
    barely, and the pyramid's own features are unchanged by the option."""
    k = 8
    plain = vone_energy(grid=2, colour_pairs=True).eval()
    wide = vone_energy(grid=2, colour_pairs=True, global_octaves=1).eval()
    xs = torch.arange(48, dtype=torch.float32)
    grating = 0.5 + 0.2 * torch.cos(2 * torch.pi * 0.67 * xs / 48 + 0.4)
    x = grating.expand(1, 3, 48, 48).contiguous()  # luminance only, varying along x
    noise = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_plain, f_wide = plain(noise), wide(noise)
        g = wide(x)
    n = f_plain.shape[1]
    assert f_wide.shape[1] == n + 6 * k  # 3 colour axes and 3 cross energies x 8 orientations
    assert torch.equal(f_wide[:, :n], f_plain)
    luminance = g[0, n : n + k].sum(dim=(1, 2))  # per orientation, over positions
    assert luminance[0] > 20 * luminance[k // 2], luminance
    assert luminance.argmax() == 0
