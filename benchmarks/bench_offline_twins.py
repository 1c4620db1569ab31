"""Benchmark: how much of white-box a surrogate's twins find, outside the loop (calibration).

Why: the loop's found fraction mixes the surrogate's form with everything else the loop does
(which parents, which source per site, how many days). This isolates the form: each readout is
fitted on noisy responses (``--repeats`` Poisson repeats of 100 ms) of a virtual population to
``--train`` clean images, the project's synthesis engine attacks it (the demo's restarts and
budget) on held-out images, up and down, and the brain's true change at the target site is
divided by the white-box value at the same image, site and epsilon (``models.simulator``).

Readouts on the ``vone_energy`` energies: ``ridge2`` (the ``vone_energy`` candidate: ridge on a
2x2 grid), ``map4`` and ``map8`` (factorized readouts on 4x4 and 8x8 positions; ``map8`` is
``vone_energy_map``), ``blend`` (the mean of ``ridge2`` and ``map4``,
:mod:`models.blended_readout`), ``blend_pairs`` (the same with the colour cross energies,
``vone_energy(colour_pairs=True)``) and ``blend_global`` (that plus one whole-image octave,
``global_octaves=1``: ``vone_energy_blend`` as it is now). The found fraction
is judged in the twin's own direction (an up twin against the white-box up change, a down twin
against the white-box down change), and each figure is the median over cases, as in the loop's
yardstick.

Run: ``.venv/bin/python -m benchmarks.bench_offline_twins [--families v1fine v1coarse]
[--readouts blend_pairs blend_global] [--train 2304]``; writes
``benchmarks/results/bench_offline_twins.json`` and logs one line per family and readout
(median found fraction of up, down and all twins per epsilon, and their mean).
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
from models.candidate_fit import fit_site_readout
from models.encoder import SiteEncoder
from models.features import FeatureExtractor
from models.simulator import make_brain
from models.simulator.whitebox import attack_cases
from models.synthesis import Case, SynthesisConfig, synthesize

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "bench_offline_twins.json"
EPSILONS = (0.5, 1.0, 2.0)  # the demo's
TEST_PER_SITE = 3


#: The ``vone_energy`` arguments of each readout: its grid (a list for a blend) and, for the
#: last two, the colour cross energies and the whole-image octave.
READOUTS: dict[str, dict[str, Any]] = {
    "ridge2": {"grid": 2},
    "map4": {"grid": 4},
    "map8": {"grid": 8},
    "blend": {"grid": [2, 4]},
    "blend_pairs": {"grid": [2, 4], "colour_pairs": True},
    "blend_global": {"grid": [2, 4], "colour_pairs": True, "global_octaves": 1},
}


def fit_encoder(kind: str, x: torch.Tensor, y: np.ndarray) -> nn.Module:
    """``vone_energy`` features with one of the readouts of :data:`READOUTS`, as an encoder."""
    kwargs = READOUTS[kind]
    grid = kwargs["grid"]
    backbone = build_backbone("vone_energy", None, **kwargs)
    with torch.no_grad():
        feats = FeatureExtractor(backbone, "output", "flatten")(x).flatten(1).double().numpy()
    if isinstance(grid, list):
        readout = fit_site_readout(feats, y, blend_positions=tuple(g * g for g in grid))
    elif kind == "ridge2":
        readout = fit_site_readout(feats, y)
    else:
        readout = fit_site_readout(feats, y, factorized_positions=grid * grid)
    sites = [f"s{i}" for i in range(y.shape[1])]
    return SiteEncoder(backbone, "output", "flatten", readout.coef_.T, readout.intercept_, sites).float()


def found_fractions(
    model: nn.Module, brain: Any, x: torch.Tensor, sites: np.ndarray, whitebox: dict[float, Any]
) -> list[dict[str, float]]:
    """Per epsilon: median found fraction of the up twins, the down twins and all of them.

    Each twin is judged in its own direction: an up twin's rise against the white-box up change
    at the same image, site and epsilon (a fall counts as 0), a down twin's fall likewise.
    """
    r0 = brain.rates(x.numpy().astype(np.float64))[np.arange(len(x)), sites]
    n, out = len(x), []
    for eps in EPSILONS:
        cases = [Case(site=int(sites[j]), image=j, eps=eps, direction=d) for d in (1, -1) for j in range(n)]
        res = synthesize(model, x, cases, SynthesisConfig(restarts=4, budget=24))
        twins = res.adv_uint8.double().numpy() / 255.0
        delta = brain.rates(twins)[np.arange(len(cases)), np.concatenate([sites, sites])] - np.tile(r0, 2)
        up = np.maximum(delta[:n], 0.0) / whitebox[eps].up
        down = np.maximum(-delta[n:], 0.0) / whitebox[eps].down
        medians = {"up": up, "down": down, "all": np.concatenate([up, down])}
        out.append({k: float(np.median(v)) for k, v in medians.items()})
    return out


def run(
    families: list[str], n_train: int, repeats: int, seed: int = 0, readouts: list[str] | None = None
) -> dict[str, Any]:
    readouts = list(READOUTS) if readouts is None else readouts
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
            whitebox[eps] = best
        for kind in readouts:
            t0 = time.perf_counter()
            found = found_fractions(fit_encoder(kind, x_train, y), brain, x_test, sites, whitebox)
            rows.append(
                {
                    "family": family,
                    "readout": kind,
                    "found_by_epsilon": found,
                    "found_mean": float(np.mean([f["all"] for f in found])),
                }
            )
            log.info(
                "offline twins: %-9s %-6s found (up/down/all per eps) %s; mean %.3f (%.0f s)",
                family,
                kind,
                " | ".join(f"{f['up']:.3f} {f['down']:.3f} {f['all']:.3f}" for f in found),
                np.mean([f["all"] for f in found]),
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
    parser.add_argument("--readouts", nargs="+", choices=list(READOUTS), default=None, help="default: all")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    run(args.families, args.train, args.repeats, args.seed, args.readouts)
