"""Benchmark: how much of white-box a surrogate's twins find, outside the loop (calibration).

Why: the loop's found fraction mixes the surrogate's form with everything else the loop does
(which parents, which source per site, how many days). This isolates the form: each readout is
fitted on noisy responses (``--repeats`` Poisson repeats of 100 ms) of a virtual population to
``--train`` clean images, the project's synthesis engine attacks it (the demo's restarts and
budget) on held-out images, up and down, and the brain's true change at the target site is
divided by the white-box value at the same image, site and epsilon (``models.simulator``).

Readouts on the ``vone_energy`` energies: ``ridge2`` (the ``vone_energy`` candidate: ridge on a
2x2 grid) and ``map8`` (``vone_energy_map``: a factorized readout on 8x8 positions).

Run: ``.venv/bin/python -m benchmarks.bench_offline_twins [--families v1fine v1coarse]
[--train 2304]``; writes ``benchmarks/results/bench_offline_twins.json`` and logs one line per
family and readout (mean found fraction per epsilon).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.bench_surrogates import SITES, SIZE, clean_image_tensor, noisy_responses
from models.backbones import build_backbone
from models.encoder import SiteEncoder
from models.factorized_readout import FactorizedRidgeCV
from models.features import FeatureExtractor
from models.readout import MultiRidgeCV
from models.simulator import make_brain
from models.simulator.whitebox import attack_cases
from models.synthesis import Case, SynthesisConfig, synthesize

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "bench_offline_twins.json"
EPSILONS = (0.5, 1.0, 2.0)  # the demo's
TEST_PER_SITE = 3


def fit_readout(kind: str, x: torch.Tensor, y: np.ndarray) -> nn.Module:
    """``vone_energy`` features with a ridge (2x2) or factorized (8x8) readout, as an encoder."""
    grid = {"ridge2": 2, "map8": 8}[kind]
    backbone = build_backbone("vone_energy", None, grid=grid)
    with torch.no_grad():
        feats = FeatureExtractor(backbone, "output", "flatten")(x).flatten(1).double().numpy()
    readout = (
        MultiRidgeCV().fit(feats, y) if kind == "ridge2" else FactorizedRidgeCV(grid * grid).fit(feats, y)
    )
    sites = [f"s{i}" for i in range(y.shape[1])]
    return SiteEncoder(backbone, "output", "flatten", readout.coef_.T, readout.intercept_, sites).float()


def found_fractions(
    model: nn.Module, brain: Any, x: torch.Tensor, sites: np.ndarray, whitebox: dict[float, np.ndarray]
) -> list[float]:
    """Mean over cases and both directions of |true change| / white-box, per epsilon."""
    r0 = brain.rates(x.numpy().astype(np.float64))[np.arange(len(x)), sites]
    out = []
    for eps in EPSILONS:
        cases = [
            Case(site=int(sites[j]), image=j, eps=eps, direction=d) for d in (1, -1) for j in range(len(x))
        ]
        res = synthesize(model, x, cases, SynthesisConfig(restarts=4, budget=24))
        twins = res.adv_uint8.double().numpy() / 255.0
        target = np.concatenate([sites, sites])
        change = np.abs(brain.rates(twins)[np.arange(len(cases)), target] - np.concatenate([r0, r0]))
        out.append(float(np.mean(change / np.concatenate([whitebox[eps], whitebox[eps]]))))
    return out


def run(families: list[str], n_train: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    x = clean_image_tensor(n_train + SITES * TEST_PER_SITE, seed)
    x = ((x * 255).round() / 255).contiguous()  # on the 8-bit grid, like the rig's images
    x_train, x_test = x[:n_train], x[n_train:]
    sites = np.repeat(np.arange(SITES), TEST_PER_SITE)
    rows = []
    for family in families:
        brain = make_brain(family, n_sites=SITES, image_size=SIZE, seed=seed)
        rates = brain.rates(x_train.numpy().astype(np.float64))
        y = noisy_responses(rates, np.random.default_rng(seed), repeats)
        test = x_test.numpy().astype(np.float64)
        whitebox = {}
        for eps in EPSILONS:
            best = attack_cases(brain, test, sites, np.full(len(test), eps))
            whitebox[eps] = np.maximum(best.up, best.down)
        for kind in ("ridge2", "map8"):
            t0 = time.perf_counter()
            found = found_fractions(fit_readout(kind, x_train, y), brain, x_test, sites, whitebox)
            rows.append(
                {
                    "family": family,
                    "readout": kind,
                    "found_by_epsilon": found,
                    "found_mean": float(np.mean(found)),
                }
            )
            log.info(
                "offline twins: %-9s %-6s found %s mean %.3f (%.0f s)",
                family,
                kind,
                " ".join(f"{v:.3f}" for v in found),
                np.mean(found),
                time.perf_counter() - t0,
            )
    out = {"train": n_train, "repeats": repeats, "sites": SITES, "epsilons": list(EPSILONS), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["v1", "v1fine", "v1coarse"])
    parser.add_argument("--train", type=int, default=2304, help="clean training images (3 days of 768)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    run(args.families, args.train, args.repeats, args.seed)
