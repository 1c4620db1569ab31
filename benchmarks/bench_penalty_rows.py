"""Calibration: what twins in the readout's penalty choice do to a surrogate's gradient.

A night's readout is fitted on clean images and the twins shown so far. A twin is a near-copy of
its parent, so a penalty chosen by leave-one-out or GCV over all images is chosen as if a left-out
twin could be predicted from its parent: far too little shrinkage. This fits ``vone_energy``'s
ridge readout on noisy responses of a virtual population to ``--clean`` clean images plus 216
twins (12 sites x 3 parents x epsilons 0.5, 1, 2 x up and down, along the clean-only readout's
own gradient, as a first night would make them), three ways, and compares each site's gradient
with the brain's on held-out images (median cosine):

* ``clean only``: GCV on the clean images, no twins;
* ``GCV on all``: penalty and coefficients on clean images and twins;
* ``chosen on clean``: penalty by GCV on the clean images, coefficients on all (the night's rule,
  ``MultiRidgeCV.fit(..., select=one_per_group(families))``).

Run: ``.venv/bin/python -m benchmarks.bench_penalty_rows [--families v1fine v1] [--seeds 0 2]
[--clean 192]``; writes ``benchmarks/results/bench_penalty_rows.json``. Not timed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_surrogates import SITES, SIZE, clean_image_tensor, gradients, noisy_responses
from models.backbones import build_backbone
from models.encoder import SiteEncoder
from models.features import FeatureExtractor
from models.readout import MultiRidgeCV, one_per_group
from models.simulator import make_brain

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results" / "bench_penalty_rows.json"
N_TEST = 24
EPSILONS = (0.5, 1.0, 2.0)
PARENTS_PER_SITE = 3


def _twins(model: SiteEncoder, x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Twins along the model's own gradient, as a night makes them; and each twin's parent row."""
    out, parents = [], []
    for s in range(SITES):
        idx = rng.choice(len(x), PARENTS_PER_SITE, replace=False)
        xp = x[idx].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xp)[:, s].sum(), xp)
        unit = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        for eps in EPSILONS:
            for sign in (1.0, -1.0):
                out.append((x[idx] + sign * eps * unit).clamp(0, 1).detach())
                parents.extend(idx.tolist())
    return torch.cat(out), np.array(parents)


def run_one(family: str, seed: int, n_clean: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x = clean_image_tensor(n_clean + N_TEST, seed)
    x_tr, x_te = x[:n_clean], x[n_clean:]
    brain = make_brain(family, n_sites=SITES, image_size=SIZE, seed=seed)
    module = brain.as_torch_module().float()

    def rates(im: torch.Tensor) -> np.ndarray:
        return brain.rates((im.numpy() * 255).round().astype(np.uint8))

    backbone = build_backbone("vone_energy", None)
    extract = FeatureExtractor(backbone, "output", "flatten")
    names = [f"s{i}" for i in range(SITES)]

    def feats(im: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return extract(im).flatten(1).double().numpy()

    def model(readout: MultiRidgeCV) -> SiteEncoder:
        return SiteEncoder.from_readout(backbone, "output", "flatten", readout, names)

    y_tr = noisy_responses(rates(x_tr), rng)
    f_tr = feats(x_tr)
    clean_only = MultiRidgeCV(cv="gcv").fit(f_tr, y_tr)
    x_tw, parents = _twins(model(clean_only), x_tr, rng)
    f_all = np.vstack([f_tr, feats(x_tw)])
    y_all = np.vstack([y_tr, noisy_responses(rates(x_tw), rng)])
    families = np.concatenate([np.arange(n_clean), parents])
    fits = {
        "clean only": clean_only,
        "GCV on all": MultiRidgeCV(cv="gcv").fit(f_all, y_all),
        "chosen on clean": MultiRidgeCV(cv="gcv").fit(f_all, y_all, select=one_per_group(families)),
    }
    g_brain = gradients(module, x_te, SITES).double()
    row: dict[str, Any] = {"family": family, "seed": seed, "clean": n_clean, "twins": len(x_tw)}
    for name, readout in fits.items():
        g = gradients(model(readout), x_te, SITES).double()
        cos = (g * g_brain).sum(-1) / (g.norm(dim=-1) * g_brain.norm(dim=-1) + 1e-30)
        row[name] = {
            "median_alpha": float(np.median(readout.alpha_)),
            "median_gradient_cosine": float(cos.median()),
        }
    return row


def run(families: list[str], seeds: list[int], n_clean: int) -> dict[str, Any]:
    rows = []
    for family in families:
        for seed in seeds:
            row = run_one(family, seed, n_clean)
            rows.append(row)
            log.info(
                "penalty rows: %s seed %d: %s",
                family,
                seed,
                "; ".join(
                    f"{k} alpha {row[k]['median_alpha']:.3g} cosine {row[k]['median_gradient_cosine']:.3f}"
                    for k in ("clean only", "GCV on all", "chosen on clean")
                ),
            )
    out = {"sites": SITES, "size": SIZE, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["v1fine", "v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--clean", type=int, default=192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    run(args.families, args.seeds, args.clean)
