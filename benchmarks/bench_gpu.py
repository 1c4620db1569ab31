"""GPU synthesis throughput at paper scale, and whether a night fits before the rig starts.

Model: ResNet-50 (torchvision architecture through ``models.backbones.build_backbone``, random
weights: nothing is downloaded) with a :class:`models.encoder.SiteEncoder` linear readout on
``layer4`` (avg-pooled, 2048 features) for 21 sites, on 224x224 images. Synthesis runs through
``models.synthesis.synthesize`` exactly as a night shard calls it, twice on the same cases:

* fp32;
* bf16 autocast + channels_last (``SynthesisConfig.autocast_dtype`` / ``channels_last``), the
  model converted to channels_last too.

Figures: gradient steps per second (one forward + backward of one row, a (case, restart) image),
images per second (cases x restarts finished per second, i.e. steps/s divided by the steps per
restart), the relative difference of the mean achieved change ``direction * (f_adv - f_clean)``
between bf16 and fp32 on the same cases (both scored in fp32 on the shipped 8-bit images), and the
projected wall time of a paper-scale night: 21 sites x 42 images x 2 directions x 5 epsilons =
8,820 cases x 100 restarts x the engine's default steps per restart (``SynthesisConfig().steps``),
on one GPU. Goal: under 45 minutes on one H100.

Without CUDA the same code runs on the CPU at a tiny scale (2 cases, 2 restarts, 3 steps) to give
CPU figures and a CPU projection, and says plainly that no GPU was measured.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbones import build_backbone
from models.encoder import SiteEncoder
from models.synthesis import Case, SynthesisConfig, synthesize

RESULTS = Path(__file__).resolve().parent / "results"
N_SITES = 21
PAPER = {"sites": 21, "images_per_site": 42, "directions": 2, "epsilons": 5, "restarts": 100}
GOAL_NIGHT_MIN = 45.0
GOAL_BF16_DIFF = 0.02  # |relative difference of the mean achieved change|
EPS = 3.0


def paper_cases() -> int:
    p = PAPER
    return p["sites"] * p["images_per_site"] * p["directions"] * p["epsilons"]


def encoder(device: torch.device) -> SiteEncoder:
    """ResNet-50 + a random linear readout for 21 sites, frozen, eval mode, on ``device``."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet50")
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 1.0 / np.sqrt(2048), size=(N_SITES, 2048)).astype(np.float32)
    bias = np.zeros(N_SITES, dtype=np.float32)
    sites = [f"site-{i:02d}" for i in range(N_SITES)]
    return SiteEncoder(backbone, "layer4", "avg", weight, bias, sites).to(device).eval()


def images(n: int, device: torch.device) -> torch.Tensor:
    from models.simulator import make_clean_images

    pixels, _ = make_clean_images(n, size=224, seed=3)
    return torch.from_numpy(pixels).float().div(255).to(device)


def measure(
    model: SiteEncoder,
    x: torch.Tensor,
    cases: list[Case],
    *,
    restarts: int,
    steps: int,
    bf16: bool,
    max_batch_rows: int,
) -> dict[str, Any]:
    """One timed synthesis of ``cases`` (after a warm-up on CUDA); throughput and achieved change."""
    cuda = x.device.type == "cuda"
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    cfg = SynthesisConfig(
        restarts=restarts,
        steps=steps,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=bf16,
        max_batch_rows=max_batch_rows,
        keep_float=False,
        seed=0,
    )
    if cuda:  # cuDNN autotuning and allocator warm-up stay out of the timing
        warm = SynthesisConfig(**{**cfg.__dict__, "restarts": min(restarts, 2), "steps": 2})
        synthesize(model, x, cases[:1], warm)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = synthesize(model, x, cases, cfg)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    grad_evals = int(res.n_grad_evals.sum())
    direction = torch.tensor([c.direction for c in cases], dtype=torch.float64)
    achieved = res.predicted_change.double().cpu() * direction
    if bf16:
        model.to(memory_format=torch.contiguous_format)
    return {
        "wall_s": wall,
        "cases": len(cases),
        "restarts": restarts,
        "steps_per_restart": steps,
        "grad_evals": grad_evals,
        "grad_steps_per_s": grad_evals / wall,
        "images_per_s": len(cases) * restarts / wall,
        "achieved_change": achieved.tolist(),
        "mean_achieved_change": float(achieved.mean()),
        "max_delta_l2": float(res.delta_l2.max()),
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def project_night_min(grad_steps_per_s: float, steps: int) -> float:
    """Minutes for the paper-scale night on one device at this throughput."""
    return paper_cases() * PAPER["restarts"] * steps / grad_steps_per_s / 60.0


def run(quick: bool = False) -> dict[str, Any]:
    """Measure fp32 and bf16 synthesis on ResNet-50 and project a paper-scale night."""
    default_steps = SynthesisConfig().steps
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda")
        n_images, restarts, steps = (2, 20, default_steps) if quick else (4, PAPER["restarts"], default_steps)
        sites = [0, 1] if quick else [0, 1, 2, 3]
        rows = 256  # SynthesisConfig's default, what a night shard uses
        name = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        device = torch.device("cpu")
        n_images, restarts, steps, sites, rows = 1, 2, 3, [0], 4
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    model = encoder(device)
    x = images(n_images, device)
    cases = [Case(s, i, EPS, d) for i in range(n_images) for s in sites for d in (1, -1)]
    out: dict[str, Any] = {
        "device": name,
        "gpu_measured": cuda,
        "quick": quick,
        "model": "resnet50 (random weights) + SiteEncoder layer4/avg, 21 sites, 224x224",
        "eps": EPS,
        "paper_night": {**PAPER, "cases": paper_cases(), "steps_per_restart": default_steps},
        "goal_night_min": GOAL_NIGHT_MIN,
    }
    for label, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        m = measure(model, x, cases, restarts=restarts, steps=steps, bf16=bf16, max_batch_rows=rows)
        m["night_min"] = project_night_min(m["grad_steps_per_s"], default_steps)
        out[label] = m
    f32, b16 = out["fp32"]["mean_achieved_change"], out["bf16_channels_last"]["mean_achieved_change"]
    out["bf16_rel_diff_change"] = (b16 - f32) / abs(f32) if f32 else float("nan")
    out["speedup_bf16"] = out["bf16_channels_last"]["grad_steps_per_s"] / out["fp32"]["grad_steps_per_s"]
    _print(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_gpu.json").write_text(json.dumps(out, indent=2))
    return out


def _print(out: dict[str, Any]) -> None:
    if not out["gpu_measured"]:
        print("NO GPU AVAILABLE: CUDA is not available on this machine. The figures below are CPU")
        print("figures at a tiny scale (1 image x 2 directions, 2 restarts, 3 steps); the GPU figures")
        print("(and the < 45 min paper-night goal) are NOT measured here.")
    print(f"\n== synthesis, {out['model']}, eps={out['eps']} on {out['device']} ==")
    head = f"{'':22s}{'grad steps/s':>14s}{'images/s':>11s}{'mean change':>13s}{'night (min)':>13s}  goal"
    print(head)
    for label in ("fp32", "bf16_channels_last"):
        m = out[label]
        print(
            f"{label:22s}{m['grad_steps_per_s']:14.1f}{m['images_per_s']:11.2f}"
            f"{m['mean_achieved_change']:13.4f}{m['night_min']:13.1f}  < {GOAL_NIGHT_MIN:.0f} min"
        )
    print(
        f"bf16 vs fp32: speed-up x{out['speedup_bf16']:.2f}; mean achieved change "
        f"{100 * out['bf16_rel_diff_change']:+.2f}%  goal: |diff| < {100 * GOAL_BF16_DIFF:.0f}%"
    )
    p = out["paper_night"]
    print(
        f"paper night: {p['cases']} cases x {p['restarts']} restarts x {p['steps_per_restart']} steps "
        f"= {p['cases'] * p['restarts'] * p['steps_per_restart']:,} gradient steps on one device"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
