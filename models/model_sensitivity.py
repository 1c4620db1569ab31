"""A surrogate's own sensitivity: attack the model itself on the clean images IT saw today.

IT and each model are then scored by the same estimators on the same images and epsilons
(models.sensitivity), which is the paper's comparison of biological and model robustness.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.cases import choose_images, site_seed
from models.encoder import predict_batched
from models.sensitivity import ModelPredictions
from models.synthesis import Case, SynthesisConfig, synthesize


def align_sites(values: np.ndarray, model_sites: Sequence[str], site_ids: Sequence[str]) -> np.ndarray:
    """(n_items, n_model_sites) -> (n_sites, n_items) in ``site_ids`` order; NaN for sites the model lacks."""
    out = np.full((len(site_ids), values.shape[0]), np.nan)
    for i, sid in enumerate(site_ids):
        if sid in model_sites:
            out[i] = values[:, list(model_sites).index(sid)]
    return out


def sensitivity_cases(
    sites: Sequence[str],
    model_sites: Sequence[str],
    n_clean: int,
    images_per_site: int,
    seed: int,
    eps: float,
) -> tuple[list[Case], list[str]]:
    """Up and down cases on ``images_per_site`` seeded clean images per site; and each case's site id."""
    cases, owner = [], []
    for sid in sites:
        for i in choose_images(n_clean, images_per_site, site_seed(seed, sid, "model-sens")):
            for d in (1, -1):
                cases.append(Case(site=list(model_sites).index(sid), image=i, eps=float(eps), direction=d))
                owner.append(sid)
    return cases, owner


def _pair_matrix(
    site_ids: Sequence[str], owner: Sequence[str], f_clean: Sequence[float], f_adv: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-site (clean, attacked) predictions as (n_sites, n_pairs) arrays, NaN-padded."""
    per_site: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sid, fc, fa in zip(owner, f_clean, f_adv, strict=True):
        per_site[sid].append((fc, fa))
    width = max(len(v) for v in per_site.values())
    pc = np.full((len(site_ids), width), np.nan)
    pp = np.full((len(site_ids), width), np.nan)
    for sid, vals in per_site.items():
        i = list(site_ids).index(sid)
        pc[i, : len(vals)] = [v[0] for v in vals]
        pp[i, : len(vals)] = [v[1] for v in vals]
    return pc, pp


def model_own_sensitivity(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    name: str,
    model_sites: Sequence[str],
    x_clean: torch.Tensor,
    site_ids: Sequence[str],
    epsilons: Sequence[float],
    *,
    seed: int,
    images_per_site: int,
    budget: int,
    device: str | torch.device,
    cancel: Callable[[], bool] | None = None,
) -> list[ModelPredictions]:
    """The model's predictions on clean images and on its own attacks of them, per epsilon.

    Attacks run in batched (non-deterministic) mode with 4 restarts: they are measured, never shipped.
    """
    f_clean = predict_batched(encoder, x_clean, device).numpy()  # (n_clean, n_model_sites)
    sites = [s for s in site_ids if s in model_sites]
    config = SynthesisConfig(restarts=4, budget=budget, seed=seed, deterministic=False, keep_float=False)
    out = []
    for eps in epsilons:
        cases, owner = sensitivity_cases(sites, model_sites, len(x_clean), images_per_site, seed, eps)
        if not cases:
            continue
        res = synthesize(encoder, x_clean.to(device), cases, config, cancel=cancel)
        pc, pp = _pair_matrix(site_ids, owner, res.f_clean.tolist(), res.f_adv.tolist())
        out.append(
            ModelPredictions(
                name=name,
                epsilon=float(eps),
                site_ids=tuple(site_ids),
                clean=align_sites(f_clean, model_sites, site_ids),
                pred_clean=pc,
                pred_perturbed=pp,
            )
        )
    return out
