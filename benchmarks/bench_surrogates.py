"""Benchmark: which surrogate's gradients point where a virtual brain's do (calibration, no loop).

Why: a twin moves a site only as far as the surrogate's gradient agrees with the brain's. This
measures that agreement directly, outside the loop, for the checkpoint-free candidates and for
the data-driven one with and without noise training, on brain families it was not built for:
each surrogate is fitted on noisy responses of a virtual population (``models.simulator``) to
clean images, then, on held-out images, its gradient for every site is compared with the
brain's exact gradient (cosine), and its predictions with the brain's rates (Pearson r).
Predictivity and gradient agreement are reported side by side because the first does not imply
the second.

Run: ``.venv/bin/python -m benchmarks.bench_surrogates [--families natural v1] [--train 600]``;
writes ``benchmarks/results/bench_surrogates.json`` and prints one line per family and surrogate.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.backbones import build_backbone
from models.encoder import SiteEncoder
from models.features import FeatureExtractor
from models.readout import MultiRidgeCV
from models.simulator import make_brain
from models.simulator.images import make_clean_images
from models.trainable import train_core

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "bench_surrogates.json"
SIZE = 64
SITES = 12
REPEATS = 8
WINDOW_S = 0.1


def noisy_responses(rates: np.ndarray, rng: np.random.Generator, repeats: int = REPEATS) -> np.ndarray:
    """Repeat-averaged Poisson rates, as the rig would measure them (``repeats`` x 100 ms)."""
    counts = rng.poisson(np.clip(rates, 0, None)[..., None] * WINDOW_S, size=(*rates.shape, repeats))
    return counts.mean(-1) / WINDOW_S


def clean_image_tensor(n: int, seed: int) -> torch.Tensor:
    """``n`` of the simulator's clean images as a (n, 3, SIZE, SIZE) float tensor in [0, 1]."""
    images, _ = make_clean_images(n, size=SIZE, seed=seed + 100)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return (x / 255.0 if x.max() > 1.5 else x).contiguous()


def ridge_surrogate(name: str, x: torch.Tensor, y: np.ndarray, **kw: Any) -> nn.Module:
    """A frozen backbone's features with a per-site ridge readout (the ``ridge`` candidates)."""
    layer, pool = {
        "pixels": ("pool", "flatten"),
        "vone": ("output", "flatten"),
        "vone_energy": ("output", "flatten"),
        "small_cnn": ("conv3", "avg"),
    }[name]
    backbone = build_backbone(name, None, **kw)
    with torch.no_grad():
        feats = FeatureExtractor(backbone, layer, pool)(x).flatten(1).double().numpy()
    readout = MultiRidgeCV().fit(feats, y)
    return SiteEncoder.from_readout(backbone, layer, pool, readout, [f"s{i}" for i in range(y.shape[1])])


def trained_surrogate(x: torch.Tensor, y: np.ndarray, feature_noise: float) -> nn.Module:
    """The data-driven candidate (V1-like front end, trained core), as the night trains it."""
    backbone = build_backbone("vone_trained", None, n_sites=y.shape[1], image_size=SIZE)
    with torch.no_grad():
        front = backbone.net.front(backbone.normalize(x))
    families = np.arange(len(x))
    train_core(backbone.net, front, y, families, seed=0, feature_noise=feature_noise)
    return backbone.eval()


def gradients(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_sites: int) -> torch.Tensor:
    """d output_i / d x for every site i and image: (n_sites, n_images, 3*H*W)."""
    out = []
    for i in range(n_sites):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[:, i].sum(), xi)
        out.append(g.flatten(1))
    return torch.stack(out)


def evaluate(
    model: nn.Module, brain_module: nn.Module, x: torch.Tensor, rates: np.ndarray
) -> dict[str, float]:
    """Median gradient cosine with the brain and median held-out r, over sites (and images)."""
    with torch.no_grad():
        pred = model(x).double().numpy()
    pc, yc = pred - pred.mean(0), rates - rates.mean(0)
    r = (pc * yc).sum(0) / np.sqrt((pc**2).sum(0) * (yc**2).sum(0) + 1e-30)
    gs = gradients(model, x, rates.shape[1]).double()
    gb = gradients(brain_module, x, rates.shape[1]).double()
    cos = (gs * gb).sum(-1) / (gs.norm(dim=-1) * gb.norm(dim=-1) + 1e-30)
    return {"median_r": float(np.median(r)), "median_gradient_cosine": float(cos.median())}


def run(families: list[str], n_train: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = clean_image_tensor(n_train + n_test, seed)
    x_tr, x_te = x_all[:n_train].contiguous(), x_all[n_train:].contiguous()
    surrogates: dict[str, Callable[[torch.Tensor, np.ndarray], nn.Module]] = {
        "pixels16": lambda x, y: ridge_surrogate("pixels", x, y, size=16),
        "smooth16": lambda x, y: ridge_surrogate("pixels", x, y, size=16, blur=0.75),
        "small_cnn": lambda x, y: ridge_surrogate("small_cnn", x, y, seed=0),
        "vone": lambda x, y: ridge_surrogate("vone", x, y),
        "vone_energy": lambda x, y: ridge_surrogate("vone_energy", x, y),
        "vone_trained": lambda x, y: trained_surrogate(x, y, 0.0),
        "vone_trained + noise training": lambda x, y: trained_surrogate(x, y, 0.3),
    }
    rows = []
    for family in families:
        brain = make_brain(family, n_sites=SITES, image_size=SIZE, seed=seed)
        module = brain.as_torch_module().float()
        rates_tr = brain.rates((x_tr.numpy() * 255).round().astype(np.uint8))
        rates_te = brain.rates((x_te.numpy() * 255).round().astype(np.uint8))
        y_tr = noisy_responses(rates_tr, rng)
        for name, fit in surrogates.items():
            t0 = time.perf_counter()
            model = fit(x_tr, y_tr)
            fit_s = time.perf_counter() - t0
            figures = evaluate(model, module, x_te, rates_te)
            rows.append({"family": family, "surrogate": name, "fit_s": fit_s, **figures})
            print(
                f"surrogates: {family:10s} {name:32s} r {figures['median_r']:.2f} "
                f"gradient cosine {figures['median_gradient_cosine']:.3f} (fit {fit_s:.1f} s)",
                flush=True,
            )
    out = {"train": n_train, "test": n_test, "sites": SITES, "size": SIZE, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["natural", "mix50", "v1"])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    run(args.families, args.train, args.test)
