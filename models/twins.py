"""Making a shard's twins from its plan (models.cases): guided, targeted and random, as one list.

Each :class:`Twin` carries the 8-bit pixels the rig will show and everything its lineage records,
so the caller stores every kind of twin the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from models.cases import ShardPlan, ShardSpec, plan_shard
from models.encoder import predict_batched
from models.random_direction import random_direction
from models.synthesis import SynthesisConfig, SynthesisResult, synthesize_targeted
from models.synthesis.curve import synthesize_curve
from models.transfer import implausible_predictions


@dataclass
class Twin:
    """One perturbed image and its lineage. ``kind`` is "perturbed", "targeted" or "random"."""

    site_id: str
    pool_index: int  # the clean parent's position in the pool
    kind: str
    epsilon: float
    direction: str  # "up", "down", "target:<category>" or "random"
    seed: int
    predicted_change: float
    achieved_l2: float
    pixels: np.ndarray  # (C, H, W) uint8
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardTwins:
    """A shard's twins in plan order (guided, targeted, random) and how many guided ones look implausible."""

    twins: list[Twin]
    n_guided: int
    n_implausible: int
    guided_grad_evals: int = 0  # model gradient evaluations of the guided twins (throughput)
    guided_seconds: float = 0.0  # wall time they took


def make_twins(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    site_ids: Sequence[str],
    x_pool: torch.Tensor,
    categories: Sequence[str | None],
    sites: Sequence[str],
    spec: ShardSpec,
    synth: SynthesisConfig,
    *,
    device: str | torch.device,
    response_range: tuple[np.ndarray, np.ndarray] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ShardTwins:
    """Plan and make every twin of ``sites`` on the pool ``x_pool`` (N, C, H, W in [0, 1], CPU).

    ``site_ids`` are the encoder's output columns; ``response_range`` (low, high per column) flags
    guided twins whose predicted response is implausible (models.transfer); ``provenance`` is added
    to every guided twin's record. Raises ``SynthesisCancelled`` when ``cancel`` says stop.
    """
    f_pool = predict_batched(encoder, x_pool, device)
    plan = plan_shard(sites, site_ids, spec, categories, f_pool)
    images = x_pool[plan.rows].to(device)
    total = max(len(plan.guided) + len(plan.targeted), 1)
    report = (lambda done, _n: progress(done / total)) if progress else None
    # Each (site, image, direction)'s epsilon grid in one continuation run (models.synthesis.curve).
    t0 = time.perf_counter()
    result = synthesize_curve(encoder, images, plan.guided, synth, progress=report, cancel=cancel)
    seconds = time.perf_counter() - t0
    twins = _guided(result, plan, site_ids, response_range, provenance or {})
    n_implausible = sum(bool(t.provenance["implausible_prediction"]) for t in twins)
    for case in plan.targeted:
        res = synthesize_targeted(
            encoder,
            images,
            case.direction.to(device),
            case.eps,
            replace(synth, seed=case.seed),
            image_indices=[case.image],
            cancel=cancel,
        )
        twins.append(_targeted(res, case.site, plan.rows[case.image], case))
    for rc in plan.random:
        twins.append(_random(encoder, x_pool[rc.pool_index], rc, device))
    return ShardTwins(
        twins,
        n_guided=len(plan.guided),
        n_implausible=n_implausible,
        guided_grad_evals=int(result.n_grad_evals.sum()),
        guided_seconds=seconds,
    )


def _guided(
    result: SynthesisResult,
    plan: ShardPlan,
    site_ids: Sequence[str],
    response_range: tuple[np.ndarray, np.ndarray] | None,
    provenance: dict[str, Any],
) -> list[Twin]:
    flagged = _implausible(result, response_range)
    return [
        Twin(
            site_id=site_ids[case.site],
            pool_index=plan.rows[case.image],
            kind="perturbed",
            epsilon=case.eps,
            direction="up" if case.direction > 0 else "down",
            seed=int(result.seed[k]),
            predicted_change=float(result.predicted_change[k]),
            achieved_l2=float(result.delta_l2[k]),
            pixels=result.adv_uint8[k].numpy(),
            provenance={
                "f_clean": float(result.f_clean[k]),
                "f_adv": float(result.f_adv[k]),
                "winning_restart": int(result.winning_restart[k]),
                "n_grad_evals": int(result.n_grad_evals[k]),
                **provenance,
                "implausible_prediction": bool(flagged[k]),
            },
        )
        for k, case in enumerate(result.cases)
    ]


def _implausible(result: SynthesisResult, response_range: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Which twins' predicted responses lie far outside their site's observed range."""
    if response_range is None or not len(result.cases):
        return np.zeros(len(result.cases), dtype=bool)
    low, high = response_range
    cols = np.array([c.site for c in result.cases])
    f_adv = np.asarray(result.f_adv, dtype=np.float64)
    return implausible_predictions(f_adv, np.asarray(low)[cols], np.asarray(high)[cols])


def _targeted(res: SynthesisResult, col: int, pool_index: int, case: Any) -> Twin:
    return Twin(
        site_id=case.site_id,
        pool_index=pool_index,
        kind="targeted",
        epsilon=case.eps,
        direction=f"target:{case.category}",
        seed=case.seed,  # the base seed of this call; it reproduces the engine's derived seed
        predicted_change=float(res.out_adv[0, col] - res.out_clean[0, col]),
        achieved_l2=float(res.delta_l2[0]),
        pixels=res.adv_uint8[0].numpy(),
        provenance={
            "target_score_clean": float(res.f_clean[0]),
            "target_score": float(res.f_adv[0]),
            "preferred_category": case.category,
            "engine_seed": int(res.seed[0]),
        },
    )


def _random(
    encoder: Callable[[torch.Tensor], torch.Tensor], clean: torch.Tensor, case: Any, device: Any
) -> Twin:
    q = random_direction(clean, case.eps, case.seed)
    with torch.no_grad():
        f = encoder(torch.stack([clean, q.float() / 255]).to(device)).cpu()
    return Twin(
        site_id=case.site_id,
        pool_index=case.pool_index,
        kind="random",
        epsilon=case.eps,
        direction="random",
        seed=case.seed,
        predicted_change=float(f[1, case.site] - f[0, case.site]),
        achieved_l2=float((q.double() / 255 - clean.double()).norm()),
        pixels=q.numpy(),
    )
