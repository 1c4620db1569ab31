"""The whole epsilon grid of a case in one run: continuation from one epsilon to the next.

A night asks, per site, clean image and direction, for the most effective image at every epsilon
of a grid (1, 2, 4, 8).  Solved independently, each epsilon starts from scratch; but the optimum
at one radius is an excellent start at the next (for a smooth model it moves along a curve), so
here only the first epsilon of each grid gets a full search and every further epsilon is a short
warm-started refinement from the previous solution, rescaled to the new radius.  The grid's
curve costs ``(1 + warm_share)`` times one epsilon's budget, whatever its length (at least one
evaluation per further epsilon).

The largest epsilon goes first by default (``order="descending"``): it is the least linear
problem, where restarts and the big-ball phase pay off, while at the smaller radii the model is
nearly linear and a few steps from the shrunk optimum converge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .config import Case, SynthesisConfig, SynthesisResult
from .engine import Cancel, EngineCase, Progress, SiteObjective, clean_outputs, run_engine, site_cases
from .inputs import check_cases, check_model_output, module_eval, parse_cases, validate_call
from .projection import project_l2_ball_box

__all__ = ["curve_budgets", "curve_stages", "synthesize_curve"]


def curve_stages(cases: list[Case], order: str = "descending") -> list[list[int]]:
    """Case indices per stage: stage ``s`` holds the ``s``-th epsilon of every (site, image, direction).

    Cases of one group are visited in ``order`` of epsilon; a zero epsilon (nothing to search)
    and duplicate epsilons simply take their place in the order.
    """
    if order not in ("ascending", "descending"):
        raise ValueError(f"order must be 'ascending' or 'descending', got {order!r}")
    groups: dict[tuple[int, int, int], list[int]] = {}
    for k, c in enumerate(cases):
        groups.setdefault((c.site, c.image, c.direction), []).append(k)
    stages: list[list[int]] = []
    for members in groups.values():
        members.sort(key=lambda k: cases[k].eps, reverse=order == "descending")
        for s, k in enumerate(members):
            if s == len(stages):
                stages.append([])
            stages[s].append(k)
    return stages


def curve_budgets(budget: int, n_stages: int, warm_share: float = 0.5) -> list[int]:
    """Gradient evaluations per case in each stage: ``(1 + warm_share) * budget`` in all.

    The first stage gets the whole ``budget`` (so the first epsilon is searched exactly as
    :func:`synthesize` would); every warm stage an equal share of ``warm_share * budget``, at
    least 1 (one evaluation keeps the rescaled previous optimum), so a grid longer than
    ``warm_share * budget + 1`` costs a little more than ``(1 + warm_share)`` budgets.
    """
    if n_stages <= 1:
        return [budget]
    warm = max(1, int(warm_share * budget) // (n_stages - 1))
    return [budget] + [warm] * (n_stages - 1)


def _warm_start(prev: Tensor, center: Tensor, eps_prev: float, eps: float) -> Tensor:
    """The previous optimum rescaled to radius ``eps`` and projected onto the new ball and the box."""
    if eps_prev <= 0.0:
        return center.clone()
    y = center + (eps / eps_prev) * (prev - center)
    return project_l2_ball_box(y[None], center[None], torch.tensor([eps], dtype=y.dtype, device=y.device))[0]


def _stage_cases(
    cl: list[Case],
    idx: list[int],
    seeds: list[EngineCase],
    images: Tensor,
    best: dict[int, Tensor],
    last: dict[tuple[int, int, int], int],
) -> list[EngineCase]:
    """Engine cases of one stage, each warm-started from its grid's previous optimum (if any).

    ``last`` maps a grid to the case solved last in it and is advanced to this stage.
    """
    out = []
    for k in idx:
        c = cl[k]
        key = (c.site, c.image, c.direction)
        start = None
        if key in last and c.eps > 0.0:
            j = last[key]
            start = _warm_start(best[j], images[c.image], float(cl[j].eps), float(c.eps))
        last[key] = k
        out.append(EngineCase(image=c.image, eps=float(c.eps), seed=seeds[k].seed, start=start))
    return out


def _merge(
    parts: list[tuple[list[int], SynthesisResult]], m: int, cases: list[Case], keep_float: bool
) -> SynthesisResult:
    """One result in case order from the stages' results."""
    first = parts[0][1]

    def gather(name: str) -> Tensor:
        like: Tensor = getattr(first, name)
        out = torch.zeros((m,) + tuple(like.shape[1:]), dtype=like.dtype)
        for idx, res in parts:
            out[torch.as_tensor(idx)] = getattr(res, name)
        return out

    names = ("adv_uint8", "delta_l2", "f_clean", "f_adv", "predicted_change", "out_clean", "out_adv")
    fields = {n: gather(n) for n in names}
    fields.update({n: gather(n) for n in ("winning_restart", "seed", "n_grad_evals")})
    adv = gather("adv") if keep_float else None
    plans = [res.extras.get("plan") for _, res in parts]
    return SynthesisResult(cases=cases, adv=adv, extras={"plans": plans}, **fields)


def synthesize_curve(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    cases: Sequence[Case] | tuple[object, object, object, object],
    config: SynthesisConfig | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    *,
    order: str = "descending",
    warm_share: float = 0.5,
    warm_round: int = 5,
) -> SynthesisResult:
    """Like :func:`models.synthesis.synthesize`, solving each case's epsilon grid by continuation.

    Cases that share site, image and direction form one grid; the first epsilon of a grid
    (in ``order``) is searched with ``config`` as usual, every further one by a short search
    (no big-ball phase) whose restart 0 starts at the previous epsilon's float optimum rescaled
    to the new radius and restart 1 at the clean image, when the warm budget gives rounds of
    ``warm_round`` steps to two restarts (on the benchmark's trained CNN, a second start
    lifted the middle epsilon from 0.998x to 1.0x APGD at budget 200).  The grid's cost is
    ``(1 + warm_share)`` times ``config``'s budget (:func:`curve_budgets`), and a case's
    result depends only on its own grid, the model and the config (deterministic mode stays
    bit-reproducible).  Returns one row per case, in the order given, like
    :func:`synthesize`; ``n_grad_evals`` is each case's own stage budget.
    """
    cfg = config or SynthesisConfig()
    validate_call(cfg, images)
    if not 0.0 <= warm_share <= 10.0:
        raise ValueError(f"warm_share must be in [0, 10], got {warm_share}")
    cl = parse_cases(cases)
    check_cases(cl, images.shape[0])
    stages = curve_stages(cl, order)
    budgets = curve_budgets(cfg.total_budget(), len(stages), warm_share)
    dev, m = images.device, len(cl)
    with module_eval(model):
        first = check_model_output(model, images)
        for k, c in enumerate(cl):
            if not (0 <= c.site < first.shape[1]):
                raise ValueError(f"case {k}: site index {c.site} out of range [0, {first.shape[1]})")
        clean_out = clean_outputs(model, images, cfg.max_batch_rows, first=first)
        seeds = site_cases(cl, cfg)
        parts: list[tuple[list[int], SynthesisResult]] = []
        best: dict[int, Tensor] = {}  # case index -> float optimum (on the device)
        last: dict[tuple[int, int, int], int] = {}
        done = 0
        for s, (idx, budget) in enumerate(zip(stages, budgets, strict=True)):
            stage_cfg = replace(cfg, budget=budget, keep_float=True)
            if s > 0:
                stage_cfg = replace(stage_cfg, first_ball_factor=1.0, min_round_steps=warm_round)
            ecs = _stage_cases(cl, idx, seeds, images, best, last)
            sub = [cl[k] for k in idx]
            site = torch.tensor([c.site for c in sub], device=dev)
            obj = SiteObjective(site, torch.tensor([c.direction for c in sub], device=dev))
            offset = done

            def stage_progress(d: int, _n: int, offset: int = offset) -> None:
                if progress is not None:
                    progress(offset + d, m)

            kw = {"progress": stage_progress, "cancel": cancel, "clean_out": clean_out}
            res = run_engine(model, images, ecs, obj, stage_cfg, **kw)  # type: ignore[arg-type]
            assert res.adv is not None
            for j, k in enumerate(idx):
                best[k] = res.adv[j].to(dev)
            parts.append((idx, res))
            done += len(idx)
    return _merge(parts, m, cl, cfg.keep_float)
