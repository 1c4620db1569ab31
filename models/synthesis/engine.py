"""The synthesis engine: batched projected gradient ascent on site predictions.

:func:`run_engine` solves a list of validated :class:`EngineCase` s for any
:class:`~models.synthesis.pool.Objective`; :func:`synthesize` (site up/down) and
:func:`models.synthesis.targeted.synthesize_targeted` validate their inputs and call it.
The row arithmetic lives in :mod:`models.synthesis.pool`, the row state in
:mod:`models.synthesis.rows`, model-call tuning in :mod:`models.synthesis.tuning`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from .config import Case, SynthesisCancelled, SynthesisConfig, SynthesisResult
from .inputs import check_cases, check_model_output, derive_seed, module_eval, parse_cases, validate_call
from .pool import Objective, RowPool
from .quantize import quantize_in_ball
from .rows import Finished
from .schedule import Plan, plan_budget
from .steps import AttackStep, L2BallBoxStep
from .tuning import tuned_calls

__all__ = [
    "synthesize",
    "derive_seed",
    "plan_for",
    "EngineCase",
    "Objective",
    "SiteObjective",
    "run_engine",
    "clean_outputs",
    "tuned_calls",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event


@dataclass(frozen=True)
class EngineCase:
    """One validated problem for :func:`run_engine`.

    Attributes
    ----------
    image : int
        Index of the clean image (the ball's centre) in the call's images.
    eps : float
        Ball radius (L2); 0 returns the clean image without a gradient evaluation.
    seed : int
        Seed of the case's random starts (a case's result depends on it, never on neighbours).
    start : Tensor of shape (C, H, W) or None
        A warm start for restart 0 instead of the clean image (inside the ball and the box).
    """

    image: int
    eps: float
    seed: int
    start: Tensor | None = None


class SiteObjective:
    """``direction * f_site``: up (+1) maximises a site's prediction, down (-1) minimises it."""

    def __init__(self, site: Tensor, direction: Tensor) -> None:
        self.site = site
        self.direction = direction

    def score(self, out: Tensor, case: Tensor) -> Tensor:
        return out.gather(1, self.site[case].unsqueeze(1)).squeeze(1)

    def value(self, out: Tensor, case: Tensor) -> Tensor:
        return self.direction[case].to(out.dtype) * self.score(out, case)


def plan_for(config: SynthesisConfig) -> Plan:
    """The per-case plan (restarts, rounds, phases, checkpoints) this config produces."""
    fixed = config.steps if config.budget is None else None
    return plan_budget(
        config.total_budget(),
        config.restarts,
        halving=config.successive_halving,
        eta=config.halving_eta,
        min_round_steps=config.min_round_steps,
        big_ball_fraction=config.first_ball_fraction if config.first_ball_factor > 1.0 else 0.0,
        fixed_steps=fixed,
    )


def _is_cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@contextlib.contextmanager
def _cudnn_deterministic() -> Iterator[None]:
    """Deterministic cuDNN kernels for the call only (touches nothing but these two flags)."""
    c = torch.backends.cudnn
    old = (c.deterministic, c.benchmark)
    c.deterministic, c.benchmark = True, False
    try:
        yield
    finally:
        c.deterministic, c.benchmark = old


def clean_outputs(
    model: Callable[[Tensor], Tensor], images: Tensor, rows: int, first: Tensor | None = None
) -> Tensor:
    """Model outputs on every image, in float32, ``rows`` images per call (``first``: image 0's)."""
    with torch.no_grad():
        outs = [] if first is None else [first]
        outs.extend(model(images[i : i + rows]) for i in range(len(outs), images.shape[0], rows))
    return torch.cat([o.float() for o in outs])


class _Outputs:
    """Per-case results as cases finish: the best restart's 8-bit image, its scores and norm."""

    def __init__(self, m: int, images: Tensor, n_sites: int, keep_float: bool) -> None:
        shape = (m,) + tuple(images.shape[1:])
        self.m, self.done = m, 0
        self.adv_q = torch.zeros(shape, dtype=torch.uint8)
        self.adv_f = torch.zeros(shape, dtype=torch.float32) if keep_float else None
        self.delta = torch.zeros(m, dtype=torch.float64)
        self.out_adv = torch.zeros(m, n_sites)
        self.win = torch.zeros(m, dtype=torch.long)
        self.n_evals = torch.zeros(m, dtype=torch.long)

    def finalize(self, pool: RowPool, objective: Objective, items: list[Finished]) -> None:
        """Quantise every candidate inside its ball, score it, keep each case's best."""
        if not items:
            return
        dev = pool.dev
        x_best = torch.cat([it.x_best for it in items])
        q, d = quantize_in_ball(
            x_best,
            torch.cat([it.center for it in items]),
            torch.cat([it.eps for it in items]),
            torch.cat([it.grad_best for it in items]),
        )
        groups = [it.x_best.shape[0] for it in items]
        ids = torch.tensor([it.case for it in items], device=dev, dtype=torch.long)
        case_rows = torch.repeat_interleave(ids, torch.tensor(groups, device=dev))
        out = pool.score(q.float() / 255.0, groups)
        val = objective.value(out, case_rows)
        # Each case's winning row, found on the device and fetched once for all cases (a fetch
        # per case waits for the accelerator each time: hundreds of stalls per shard on a GPU).
        # ``argmax`` takes the first maximum: the lowest restart wins a tie.
        starts = accumulate(groups[:-1], initial=0)
        win = torch.stack([s + torch.argmax(val[s : s + n]) for s, n in zip(starts, groups, strict=True)])
        cases = torch.tensor([it.case for it in items], dtype=torch.long)
        self.adv_q[cases] = q[win].cpu()
        if self.adv_f is not None:
            self.adv_f[cases] = x_best[win].float().cpu()
        self.delta[cases] = d[win].cpu().to(self.delta.dtype)
        self.out_adv[cases] = out[win].cpu().to(self.out_adv.dtype)
        self.win[cases] = torch.cat([it.restart for it in items])[win].cpu()
        self.done += len(items)


def _zero_eps(cid: int, images: Tensor, img: int) -> Finished:
    """A case of radius 0: the clean image is its only candidate."""
    c = images[img : img + 1]
    zero = torch.zeros(1, device=c.device, dtype=c.dtype)
    return Finished(cid, c, c, zero, torch.zeros(1, device=c.device, dtype=torch.long), torch.zeros_like(c))


def run_engine(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    cases: Sequence[EngineCase],
    objective: Objective,
    config: SynthesisConfig,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    clean_out: Tensor | None = None,
    result_cases: list[Case] | None = None,
    step: AttackStep | None = None,
) -> SynthesisResult:
    """Solve validated ``cases`` with ``objective``; see :func:`synthesize` for the contract.

    ``clean_out`` (N, n_sites): the model's outputs on ``images`` when the caller has them;
    ``result_cases`` is stored as the result's ``cases``; ``step`` is the threat model's
    geometry (default: the L2 ball intersected with the [0, 1] box).
    """
    plan = plan_for(config)
    m, dev = len(cases), images.device
    out_clean_img = clean_outputs(model, images, config.max_batch_rows) if clean_out is None else clean_out
    ci = torch.as_tensor([c.image for c in cases], dtype=torch.long, device=dev)
    out_clean = out_clean_img[ci]
    f_clean = objective.score(out_clean, torch.arange(m, device=dev)).cpu()
    stepper = step or L2BallBoxStep(init_fraction=config.init_fraction, deterministic=config.deterministic)
    pool = RowPool(model, images, objective, config, plan, stepper)
    res = _Outputs(m, images, out_clean.shape[1], config.keep_float)

    def finalize(items: list[Finished]) -> None:
        res.finalize(pool, objective, items)
        if items:
            logger.debug("synthesis: %d/%d cases done (%d rows live)", res.done, m, pool.n_rows())
            if progress is not None:
                progress(res.done, m)

    pending = deque(range(m))
    stack = contextlib.ExitStack()
    if config.deterministic and dev.type == "cuda":
        stack.enter_context(_cudnn_deterministic())
    with stack:
        while pending or pool.order:
            if _is_cancelled(cancel):
                raise SynthesisCancelled(f"synthesis cancelled after {res.done}/{m} cases")
            zero: list[Finished] = []
            while pending and (pool.n_rows() + plan.rows[0] <= config.max_batch_rows or not pool.order):
                cid = pending.popleft()
                c = cases[cid]
                if c.eps == 0.0:
                    zero.append(_zero_eps(cid, images, c.image))
                    continue
                pool.admit(cid, c.image, float(c.eps), int(c.seed), c.start)
                res.n_evals[cid] = plan.budget
            finalize(zero)
            if pool.order:
                finalize(pool.iterate())
    f_adv = objective.score(res.out_adv.to(dev), torch.arange(m, device=dev)).cpu()
    return SynthesisResult(
        cases=result_cases or [],
        adv_uint8=res.adv_q,
        adv=res.adv_f,
        delta_l2=res.delta,
        f_clean=f_clean,
        f_adv=f_adv,
        predicted_change=f_adv - f_clean,
        out_clean=out_clean.cpu(),
        out_adv=res.out_adv,
        winning_restart=res.win,
        seed=torch.as_tensor([int(c.seed) for c in cases], dtype=torch.long),
        n_grad_evals=res.n_evals,
        extras={"plan": plan},
    )


def site_cases(cl: list[Case], cfg: SynthesisConfig) -> list[EngineCase]:
    """Engine cases of validated site cases, each with its given or content-derived seed."""
    return [
        EngineCase(
            image=c.image,
            eps=float(c.eps),
            seed=c.seed
            if c.seed is not None
            else derive_seed(cfg.seed, c.site, c.image, float(c.eps), c.direction),
        )
        for c in cl
    ]


def synthesize(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    cases: Sequence[Case] | tuple[object, object, object, object],
    config: SynthesisConfig | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> SynthesisResult:
    """Find, per case, the image within ``eps`` (L2, in the [0, 1] box) that moves a site most.

    Parameters
    ----------
    model : nn.Module or callable
        Maps images (B, C, H, W) in [0, 1] to site predictions (B, n_sites).  Put in eval mode for
        the call (restored after) so batch statistics never couple rows.
    images : Tensor of shape (N, C, H, W)
        Clean images in [0, 1], on the device to compute on.  If they are not on the 8-bit grid the
        eps ball is still centred on them as given.
    cases : list of Case, or tuple of array-likes (site_idx, image_idx, eps, direction)
    config : SynthesisConfig, optional
    progress : callable(done, total), optional
        Called whenever cases finish.
    cancel : callable returning bool, or threading.Event, optional
        Checked before every gradient step; when set, :class:`SynthesisCancelled` is raised.

    Returns
    -------
    SynthesisResult
        One row per case, in the order given.

    Raises
    ------
    ValueError
        On malformed images, cases or config.
    SynthesisCancelled
        When ``cancel`` fires.
    """
    cfg = config or SynthesisConfig()
    validate_call(cfg, images)
    cl = parse_cases(cases)
    check_cases(cl, images.shape[0])
    with module_eval(model):
        first = check_model_output(model, images)
        n_sites = first.shape[1]
        for k, c in enumerate(cl):
            if not (0 <= c.site < n_sites):
                raise ValueError(f"case {k}: site index {c.site} out of range [0, {n_sites})")
        dev = images.device
        site = torch.tensor([c.site for c in cl], device=dev)
        obj = SiteObjective(site, torch.tensor([c.direction for c in cl], device=dev))
        return run_engine(
            model,
            images,
            site_cases(cl, cfg),
            obj,
            cfg,
            progress=progress,
            cancel=cancel,
            result_cases=cl,
            clean_out=clean_outputs(model, images, cfg.max_batch_rows, first=first),
        )
