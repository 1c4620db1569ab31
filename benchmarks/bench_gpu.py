"""GPU figures (issue 21.5): ResNet-50 synthesis throughput and strength, the paper-scale night, training.

Everything runs through the project's own code on the GPU. Without one nothing is measured
(``--cpu-smoke`` runs every section at a tiny scale on the CPU, to check the script; those are
not GPU figures and the report says so). Nothing is downloaded: ResNet-50 has random
weights (timing and relative strength do not depend on them), the images are the simulator's.

Sections, each written to ``benchmarks/results/bench_gpu.json`` as soon as it finishes, so a run
cut short still leaves what it measured:

``throughput``
    Gradient steps per second of the engine (``models.synthesis.synthesize``) against
    torchattacks PGD-L2 on the same cases and evaluations, in one interleaved run (best of
    ``repeats``): PGD-L2 as usually called (NCHW) and fed channels-last inputs; the engine in
    fp32 (what a night runs) and with bf16 autocast; and the ceiling, one plain forward +
    backward of the model on a full batch (``model_only``).
``strength``
    bf16 against fp32 at equal budget (the night's budget, 2,000 evaluations, and 200): the mean
    achieved change ``direction * (f_adv - f_clean)``, both scored in fp32 on the shipped 8-bit
    images. bf16 is acceptable only where the ratio is >= 0.99.
``night``
    One whole shard of the paper-scale night's synthesis, exactly as a night shard calls it
    (``synthesize_curve`` over the epsilon grid 1, 2, 4, 8 with the night's defaults: 100
    restarts, 2,000 evaluations per grid's first epsilon; the night's default shard of 4 sites
    x 21 clean images x 2 directions), timed and scaled to the paper's 200 sites (50 such
    shards, one after another on one GPU). A shard's size matters: the engine keeps its
    batch full only with enough grids in flight (a case averages 2.9 rows over its life at
    this budget; on an H200 a 16-grid slice ran at 2,086 evaluations/s, a whole shard at 2,439);
    plus the refit's share at paper scale (ResNet-50 features of
    5,000 images on the GPU; the ridge readout for 200 sites: exact leave-one-out on the CPU,
    and the night's GCV readout fitted and updated with a day's 500 images on the CPU and on
    the GPU). The sum is a projection from measured parts, not a night run end to end.
``training``
    The data-driven surrogate (``models.trainable``) at paper scale: 5,000 images of 224x224,
    200 sites (responses of the simulator's ``v1`` population to the same images at 56x56, so
    the early stop sees real tuning), front end and core training on the device.

Run: ``python -m benchmarks.bench_gpu [--quick] [--cpu-smoke] [--only SECTION ...]`` (or
``python -m benchmarks.run_all --only gpu``). All sections together take about 10 minutes on an H200
(the two night shards about 6 of them); ``--only`` splits it across short GPU loans.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.backbones import build_backbone
from models.encoder import SiteEncoder
from models.synthesis import Case, SynthesisConfig, synthesize, synthesize_curve

log = logging.getLogger("bench_gpu")

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_SITES, PAPER_IMAGES, PAPER_EPS, PAPER_TRAIN_IMAGES = 200, 21, (1.0, 2.0, 4.0, 8.0), 5000
GOAL_NIGHT_MIN = 30.0
GOAL_TRAIN_MIN = 10.0
GOAL_BF16_STRENGTH = 0.99


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def encoder(n_sites: int, device: torch.device) -> SiteEncoder:
    """ResNet-50 (random weights) + a random linear readout on layer4 (avg-pooled), frozen."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet50")
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 1.0 / np.sqrt(2048), size=(n_sites, 2048)).astype(np.float32)
    sites = [f"site-{i:03d}" for i in range(n_sites)]
    enc = SiteEncoder(backbone, "layer4", "avg", weight, np.zeros(n_sites, np.float32), sites)
    return enc.to(device).eval()


def images(n: int, size: int, device: torch.device) -> Tensor:
    from models.simulator import make_clean_images

    pixels, _ = make_clean_images(n, size=size, seed=3)
    return torch.from_numpy(pixels).float().div(255).to(device)


def many_images(n: int, size: int, device: torch.device) -> Tensor:
    """``n`` distinct images at ``size``, drawn at a quarter of it and upsampled on the device.

    The simulator draws a 224x224 image in about 0.05 s of CPU; thousands at a quarter size and
    bilinear upsampling keep the benchmark's set-up to seconds (their content is as varied, only
    smoother, which changes no timing).
    """
    return upsampled(images(n, max(size // 4, 8), device), size)


def upsampled(small: Tensor, size: int) -> Tensor:
    """``small`` images (B, 3, h, w) in [0, 1], bilinearly upsampled to ``size`` x ``size``."""
    up = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp_(0.0, 1.0)


def paired_cases(n_cases: int, n_images: int, eps: float) -> list[Case]:
    """Sites 0 and 1 in turn, up and down in pairs, over the images: the timing and strength cases."""
    return [Case(k % 2, (k // 2) % n_images, eps, 1 if k % 4 < 2 else -1) for k in range(n_cases)]


def _achieved(res: Any) -> Tensor:
    d = torch.tensor([c.direction for c in res.cases], dtype=torch.float64)
    return res.predicted_change.double().cpu() * d


def _cfg(budget: int | None, bf16: bool, rows: int, **kw: Any) -> SynthesisConfig:
    return SynthesisConfig(
        budget=budget,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=None,  # the engine's own choice (on the H200, channels-last was slower in both)
        max_batch_rows=rows,
        keep_float=False,
        seed=0,
        **kw,
    )


def throughput(
    model: nn.Module, x: Tensor, n_cases: int, budget: int, rows: int, repeats: int
) -> dict[str, Any]:
    """Engine (fp32, bf16) against PGD-L2 (NCHW, channels-last) on the same cases, interleaved."""
    import torchattacks

    from benchmarks.bench_synthesis import AsLogits, ChannelsLastInput, _objective

    dev, eps = x.device, 3.0
    n_img = x.shape[0]
    cases = paired_cases(n_cases, n_img, eps)
    xs = x[torch.tensor([c.image for c in cases], device=dev)]
    site = torch.tensor([c.site for c in cases], device=dev)
    d = torch.tensor([float(c.direction) for c in cases], device=dev)
    c0 = _objective(model, xs, site, d) * d
    atk = torchattacks.PGDL2(AsLogits(model, site, d, c0), eps=eps, alpha=2.5 * eps / budget, steps=budget)
    atk_cl = torchattacks.PGDL2(
        AsLogits(ChannelsLastInput(model), site, d, c0), eps=eps, alpha=2.5 * eps / budget, steps=budget
    )
    ones = torch.ones(n_cases, dtype=torch.long, device=dev)
    xr = x[torch.arange(rows, device=dev) % n_img]

    def model_only(bf16: bool) -> Tensor:  # the ceiling: one forward + backward of ``rows`` images
        xx = xr.detach().requires_grad_(True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            f = model(xx)[:, 0].float().sum()
        return torch.autograd.grad(f, xx)[0]

    runs: dict[str, Callable[[], Any]] = {
        "model_only_fp32": lambda: model_only(False),
        "model_only_bf16": lambda: model_only(True),
        "engine_fp32": lambda: synthesize(model, x, cases, _cfg(budget, False, rows)),
        "engine_bf16": lambda: synthesize(model, x, cases, _cfg(budget, True, rows)),
        "pgd": lambda: atk(xs, ones),
        "pgd_channels_last": lambda: atk_cl(xs, ones),
    }
    for fn in runs.values():  # warm-up: cuDNN autotuning, the engine's layout choice, allocator
        fn()
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for key, fn in runs.items():
            best[key] = min(best[key], _timed(fn, dev)[0])
    evals = n_cases * budget
    out: dict[str, Any] = {"cases": n_cases, "budget": budget, "max_batch_rows": rows, "repeats": repeats}
    for key, t in best.items():
        out[f"{key}_steps_per_s"] = (rows if key.startswith("model_only") else evals) / t
    fastest_pgd = max(out["pgd_steps_per_s"], out["pgd_channels_last_steps_per_s"])
    out["engine_fp32_vs_pgd"] = out["engine_fp32_steps_per_s"] / out["pgd_steps_per_s"]
    out["engine_fp32_vs_fastest_pgd"] = out["engine_fp32_steps_per_s"] / fastest_pgd
    out["engine_bf16_vs_fastest_pgd"] = out["engine_bf16_steps_per_s"] / fastest_pgd
    out["engine_fp32_vs_model_only"] = out["engine_fp32_steps_per_s"] / out["model_only_fp32_steps_per_s"]
    out["engine_bf16_vs_model_only"] = out["engine_bf16_steps_per_s"] / out["model_only_bf16_steps_per_s"]
    out["bf16_speedup"] = out["engine_bf16_steps_per_s"] / out["engine_fp32_steps_per_s"]
    return out


def strength(model: nn.Module, x: Tensor, n_cases: int, budget: int, rows: int) -> dict[str, Any]:
    """bf16 against fp32 at equal budget: mean achieved change (fp32-scored), and images/s."""
    cases = paired_cases(n_cases, x.shape[0], 3.0)
    out: dict[str, Any] = {"cases": n_cases, "budget": budget, "eps": 3.0}
    for label, bf16 in (("fp32", False), ("bf16", True)):
        cfg = _cfg(budget, bf16, rows)
        wall, res = _timed(lambda cfg=cfg: synthesize(model, x, cases, cfg), x.device)
        out[label] = {
            "wall_s": wall,
            "grad_steps_per_s": n_cases * budget / wall,
            "images_per_s": n_cases / wall,
            "mean_achieved_change": float(_achieved(res).mean()),
        }
    out["bf16_strength"] = out["bf16"]["mean_achieved_change"] / out["fp32"]["mean_achieved_change"]
    out["bf16_accepted"] = out["bf16_strength"] >= GOAL_BF16_STRENGTH
    return out


def night(
    model: nn.Module, x: Tensor, n_sites: int, n_images: int, rows: int, bf16: bool, budget: int | None
) -> dict[str, Any]:
    """One shard of the paper night's synthesis (every epsilon of each grid), scaled to the paper."""
    cases = [
        Case(s, i, eps, d)
        for s in range(n_sites)
        for i in range(n_images)
        for d in (1, -1)
        for eps in PAPER_EPS
    ]
    cfg = _cfg(budget, bf16, rows)  # restarts 100, budget 100 x 20: the night's defaults
    wall, res = _timed(lambda: synthesize_curve(model, x, cases, cfg), x.device)
    grids, evals = n_sites * n_images * 2, int(res.n_grad_evals.sum())
    paper_grids = PAPER_SITES * PAPER_IMAGES * 2
    return {
        "grids": grids,
        "cases": len(cases),
        "budget_per_grid_first_eps": cfg.total_budget(),
        "grad_evals": evals,
        "wall_s": wall,
        "grad_steps_per_s": evals / wall,
        "paper_grids": paper_grids,
        "paper_synthesis_min": wall * paper_grids / grids / 60.0,
    }


def refit(model: SiteEncoder, n_images: int, size: int, n_sites: int, n_new: int) -> dict[str, Any]:
    """The refit's share at paper scale: backbone features on the device, then the ridge readout:
    exact leave-one-out on the CPU, and the night's GCV readout (``readout_cv`` default) fitted
    from scratch and updated with a day's ``n_new`` images, solved on the CPU and on the device.
    The device's update must give the CPU's fit from scratch (same penalties, predictions within
    1e-6), as ``tests/models/test_readout_incremental.py`` checks on any device present."""
    import copy

    from models.readout import MultiRidgeCV

    dev = next(model.parameters()).device
    x = many_images(n_images, size, dev)
    feats: list[Tensor] = []

    def extract() -> Tensor:
        with torch.no_grad():
            for i in range(0, n_images, 256):
                feats.append(model.features(x[i : i + 256]).float().cpu())
        return torch.cat(feats)

    t_feat, f = _timed(extract, dev)
    rng = np.random.default_rng(0)
    X = f.numpy().astype(np.float64)
    y = X @ rng.normal(size=(X.shape[1], n_sites)) + rng.normal(size=(n_images, n_sites)) * 30.0
    t0 = time.perf_counter()
    MultiRidgeCV().fit(X, y)
    out: dict[str, Any] = {
        "images": n_images,
        "features": int(f.shape[1]),
        "sites": n_sites,
        "features_s": t_feat,
        "readout_s": time.perf_counter() - t0,
        "cpu_threads": torch.get_num_threads(),
        "new_images": n_new,
    }
    scratch = MultiRidgeCV(cv="gcv").fit(X, y)
    base = MultiRidgeCV(cv="gcv").fit(X[:-n_new], y[:-n_new])
    pf = scratch.predict(X)
    spread = float(np.max(np.abs(pf - pf.mean(0))))
    for label, where in (("cpu", None), ("device", str(dev))):

        def fit_all(where: str | None = where) -> MultiRidgeCV:
            return MultiRidgeCV(cv="gcv", device=where).fit(X, y)

        out[f"gcv_fit_{label}_s"] = min(_timed(fit_all, dev)[0] for _ in range(3))
        times = []
        for _ in range(3):
            upd = copy.deepcopy(base)
            upd.device = where
            t, upd = _timed(lambda u=upd: u.update(X[-n_new:], y[-n_new:]), dev)
            times.append(t)
        out[f"gcv_update_{label}_s"] = min(times)
        out[f"gcv_update_{label}_same_alphas"] = bool(np.array_equal(upd.alpha_, scratch.alpha_))
        out[f"gcv_update_{label}_max_rel_diff"] = float(np.max(np.abs(upd.predict(X) - pf)) / spread)
    out["distinct_alphas"] = int(len(set(scratch.alpha_)))
    return out


def training(n_images: int, size: int, n_sites: int, device: torch.device) -> dict[str, Any]:
    """The data-driven surrogate at paper scale: front end and core training on ``device``."""
    from models.simulator import make_brain
    from models.trainable import front_maps, train_core

    small = images(n_images, max(size // 4, 8), device)
    x = upsampled(small, size)
    # The population sees the quarter-size image (a v1 brain at 224 holds every subunit's
    # full-image filter: gigabytes for 200 sites); the surrogate trains on the 224x224 one.
    brain = make_brain("v1", n_sites=n_sites, image_size=small.shape[-1], seed=0).as_torch_module().to(device)
    with torch.no_grad():
        y = torch.cat([brain(small[i : i + 128]).float().cpu() for i in range(0, n_images, 128)]).numpy()
    y = y + np.random.default_rng(0).normal(scale=0.2 * y.std(0), size=y.shape)  # recording noise
    backbone = build_backbone("vone_trained", n_sites=n_sites, image_size=size).to(device)
    t_front, front = _timed(
        lambda: front_maps(backbone.net, backbone.normalize, x, device), device
    )  # as the night does
    t_train, report = _timed(lambda: train_core(backbone.net, front, y, np.arange(n_images), seed=0), device)
    return {
        "images": n_images,
        "image_size": size,
        "sites": n_sites,
        "front_channels": int(front.shape[1]),
        "front_s": t_front,
        "train_s": t_train,
        "total_min": (t_front + t_train) / 60.0,
        "epochs": report.epochs,
        "best_epoch": report.best_epoch,
        "held_out_median_r": report.val_r,
        "goal_min": GOAL_TRAIN_MIN,
    }


def run(quick: bool = False, cpu_smoke: bool = False, only: set[str] | None = None) -> dict[str, Any]:
    """Every section on the GPU; without one, nothing (or, with ``cpu_smoke``, a tiny CPU run).
    ``only``: the sections to run (names as in the JSON; ``night`` and ``strength`` name both
    of theirs), so a short GPU loan can measure one thing."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    small = quick or not cuda
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
        "gpu_measured": cuda,
        "quick": small,
        "torch": torch.__version__,
        "model": "resnet50 (random weights) + SiteEncoder layer4/avg, 224x224",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_gpu.json"
    if not cuda and not cpu_smoke:
        log.warning("no GPU: nothing measured (--cpu-smoke runs every section tiny on the CPU)")
        path.write_text(json.dumps(out, indent=2))
        return out

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if only is not None and name not in only and name.split("_")[0] not in only:
            return
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as exc:  # one failing section must not lose the others' figures
            log.exception("section %s failed", name)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["section_s"] = time.perf_counter() - t0
        path.write_text(json.dumps(out, indent=2))
        log.info("%s: %s", name, json.dumps(out[name]))

    size = 224 if cuda else 64
    rows = 256 if cuda else 8
    model = encoder(PAPER_SITES, device)
    x = images(32 if cuda else 2, size, device)
    section(
        "throughput",
        lambda: throughput(model, x, 128 if cuda else 4, 20 if cuda else 3, rows, 3 if cuda else 1),
    )
    section("strength_budget200", lambda: strength(model, x, 32 if cuda else 2, 200 if cuda else 10, rows))
    section("strength_budget2000", lambda: strength(model, x, 8 if cuda else 2, 2000 if cuda else 20, rows))
    nb = None if cuda else 8
    from itloop.night_params import NightConfig

    night_shard = NightConfig.model_fields["sites_per_shard"].default  # the night's default shard
    shard_sites, shard_images = (2, 2) if small else (night_shard, PAPER_IMAGES)
    section("night_fp32", lambda: night(model, x, shard_sites, shard_images, rows, False, nb))
    section("night_bf16", lambda: night(model, x, shard_sites, shard_images, rows, True, nb))
    section(
        "refit",
        lambda: refit(
            model, PAPER_TRAIN_IMAGES if cuda else 64, size, PAPER_SITES if cuda else 8, 500 if cuda else 16
        ),
    )
    section(
        "training",
        lambda: training(PAPER_TRAIN_IMAGES if cuda else 64, size, PAPER_SITES if cuda else 4, device),
    )
    if cuda:
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for label in ("fp32", "bf16"):
        n, r = out.get(f"night_{label}", {}), out.get("refit", {})
        if "paper_synthesis_min" in n and "readout_s" in r:
            # The night's readout is GCV (``readout_cv`` default), solved where the night runs.
            refit_min = (r["features_s"] + r.get("gcv_fit_device_s", r["readout_s"])) / 60.0
            out[f"paper_night_min_{label}"] = n["paper_synthesis_min"] + refit_min
    out["goal_night_min"] = GOAL_NIGHT_MIN
    path.write_text(json.dumps(out, indent=2))
    if not cuda:
        log.warning("no GPU: these are CPU figures at a tiny scale, not GPU figures")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="without a GPU, run every section tiny")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["throughput", "strength", "night", "refit", "training"],
        help="these sections",
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parser.parse_args()
    run(quick=args.quick, cpu_smoke=args.cpu_smoke, only=set(args.only) if args.only else None)
