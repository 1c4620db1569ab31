"""The row pool of one engine call: admission, one gradient step for every row, retirement.

Every (case, restart) pair is one *row*; rows of many cases share a batch.  Cases stream through
a pool of ``max_batch_rows`` rows: when successive halving retires restarts (or a case finishes)
new cases are admitted, so the model always sees a full batch.  Each row follows the same plan
(:mod:`models.synthesis.schedule`) and all updates are per row, so a case's result depends only on
the model, its clean image, its epsilon, its seed and the config: not on its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .config import SynthesisConfig
from .rows import Finished, RowState, new_rows
from .schedule import Plan
from .steps import AttackStep
from .tuning import tune_calls

__all__ = ["Objective", "RowPool"]


class Objective(Protocol):
    """Maps model outputs of rows to the value to maximise and the value to report."""

    def value(self, out: Tensor, case: Tensor) -> Tensor:
        """Objective per row (maximised), from outputs (B, n_sites) and case indices (B,)."""
        ...

    def score(self, out: Tensor, case: Tensor) -> Tensor:
        """Reported value per row (``f``)."""
        ...


def _bc(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class RowPool:
    """The rows of one :func:`models.synthesis.engine.run_engine` call and their step arithmetic.

    ``stepper`` is the threat model's geometry (random start, ascent step, projection); the
    engine passes an :class:`~models.synthesis.steps.L2BallBoxStep`.
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        objective: Objective,
        cfg: SynthesisConfig,
        plan: Plan,
        stepper: AttackStep,
    ) -> None:
        self.model, self.obj, self.cfg, self.plan = model, objective, cfg, plan
        self.dev = images.device
        self.stepper = stepper
        self.images_nchw = images
        start_rows = cfg.model_rows(self.dev, images[0].numel() * images.element_size())
        self.nhwc, self.call_rows = tune_calls(model, self._forward, cfg, images, start_rows)
        # Rows are kept channels-last when the model runs faster so: every row operation is
        # indifferent to the order of a row's pixels, and the model gets a strided view, no copy.
        self.images = images.permute(0, 2, 3, 1).contiguous() if self.nhwc else images
        self.rows: RowState | None = None
        self.admitted: list[RowState] = []  # joined to the pool at the next step, at once
        self.order: list[int] = []  # active case ids in row order
        self.count: dict[int, int] = {}  # live rows per active case
        self.t: dict[int, int] = {}  # steps taken per active case

    # -- layout ------------------------------------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        """Rows as the model takes them: (B, C, H, W), channels-last strided if kept so."""
        return x.permute(0, 3, 1, 2) if self.nhwc else x

    def from_model(self, g: Tensor) -> Tensor:
        """A gradient w.r.t. :meth:`to_model`'s view, in the rows' layout."""
        return g.permute(0, 2, 3, 1).contiguous() if self.nhwc else g.contiguous()

    def to_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2).contiguous() if self.nhwc else x

    def from_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).contiguous() if self.nhwc else x

    # -- model calls -------------------------------------------------------------------------------
    def _segments(self, n: int) -> list[tuple[int, int]]:
        step = self.call_rows
        if not self.cfg.deterministic:
            return [(i, min(i + step, n)) for i in range(0, n, step)]
        # Deterministic: calls never mix cases (a case's rows, split at fixed offsets), so a
        # case's arithmetic is the same whatever else is in the pool.
        segs: list[tuple[int, int]] = []
        start = 0
        for c in self.order:
            end = start + self.count[c]
            segs.extend((i, min(i + step, end)) for i in range(start, end, step))
            start = end
        return segs

    def _forward(self, x: Tensor) -> Tensor:
        dt = self.cfg.autocast_dtype
        with torch.autocast(self.dev.type, dtype=dt, enabled=dt is not None):
            out = self.model(x)
        return out.float()

    def value_and_grad(self, x: Tensor, case: Tensor) -> tuple[Tensor, Tensor]:
        vals, grads = [], []
        for a, b in self._segments(x.shape[0]):
            xs = self.to_model(x[a:b]).detach().requires_grad_(True)
            with torch.enable_grad():
                v = self.obj.value(self._forward(xs), case[a:b])
                (g,) = torch.autograd.grad(v.sum(), xs)
            vals.append(v.detach())
            grads.append(self.from_model(g))
        if len(grads) == 1:  # one call for the whole pool: no copy
            return vals[0], grads[0]
        return torch.cat(vals), torch.cat(grads)

    # -- admission ---------------------------------------------------------------------------------
    def admit(self, cid: int, img: int, eps: float, seed: int, start: Tensor | None = None) -> None:
        """Start case ``cid``: ``plan.rows[0]`` restarts around clean image ``img``.

        Restart 0 starts at ``start`` when given (a warm start, (C, H, W), e.g. the solution at
        a neighbouring epsilon), the next at the clean image (``clean_start``, if rows remain),
        the others at random points drawn from ``seed``.
        """
        cfg, plan = self.cfg, self.plan
        r0 = plan.rows[0]
        center = self.images[img : img + 1]
        center_nchw = self.images_nchw[img : img + 1]
        r_first = eps * (cfg.first_ball_factor if plan.switch_step > 0 else 1.0)
        rad1 = torch.full((1,), r_first, device=self.dev, dtype=center.dtype)
        gen = torch.Generator(device=self.dev)
        gen.manual_seed(seed)
        xs = []
        if start is not None:
            xs.append(self.from_nchw(start[None].to(center.dtype)))
        if cfg.clean_start and len(xs) < r0:
            xs.append(center.clone())
        n_first = len(xs)
        if r0 > n_first:
            # Drawn in (C, H, W) order whatever the layout: a seed means one set of starts.
            k = r0 - n_first
            starts = center_nchw.expand(k, *center_nchw.shape[1:])
            u = self.stepper.random_perturb(starts, rad1.expand(k), gen)
            xs.append(self.from_nchw(u))
        x = torch.cat(xs)
        self.admitted.append(new_rows(cid, x, center, eps, r_first, cfg.step_init * r_first))
        self.order.append(cid)
        self.count[cid] = r0
        self.t[cid] = 0

    def n_rows(self) -> int:
        pool = len(self.rows) if self.rows is not None else 0
        return pool + sum(len(a) for a in self.admitted)

    def _join_admitted(self) -> RowState:
        if self.admitted:
            parts = ([self.rows] if self.rows is not None else []) + self.admitted
            self.rows = RowState.cat(parts)
            self.admitted = []
        assert self.rows is not None
        return self.rows

    # -- one iteration -----------------------------------------------------------------------------
    def iterate(self) -> list[Finished]:
        """One gradient evaluation for every row; returns finished cases' candidates."""
        R = self._join_admitted()
        f, g = self.value_and_grad(R.x, R.case)
        with torch.no_grad():
            self._track_best(R, f, g)
            for cid in self.order:
                self.t[cid] += 1
            # Most steps end no round and no case: the keep mask is built only when one does.
            finished: list[Finished] = []
            plan = self.plan
            if any(self.t[c] >= plan.total_steps or self.t[c] in plan.round_ends for c in self.order):
                finished = self._retire()
            if self.order:
                self._advance()
        return finished

    def _track_best(self, R: RowState, f: Tensor, g: Tensor) -> None:
        """Best point, increase count and the paper's annealing, after an evaluation ``f`` at ``R.x``."""
        cfg = self.cfg
        # Few, in-place operations on the (B,) fields: on a CPU each costs a dispatch of
        # microseconds, as much as a full-size pass on a small model's batch.  In place is safe
        # because no row field shares memory with another tensor that outlives the step
        # (admission, compaction and the phase switch make new ones; ``f`` is this step's).
        f = f.nan_to_num_(nan=-float("inf"))
        imp = f > R.f_best
        if R.x.device.type == "cpu":
            # Improved rows only: a full-size ``where`` costs about 3 copies on CPU.
            up = imp.nonzero().squeeze(1)
            if up.numel():
                R.x_best.index_copy_(0, up, R.x.index_select(0, up))
                R.grad_best.index_copy_(0, up, g.index_select(0, up))
        else:  # no host synchronisation on an accelerator: a masked copy of every row
            ib = _bc(imp, R.x)
            R.x_best = torch.where(ib, R.x, R.x_best)
            R.grad_best = torch.where(ib, g, R.grad_best)
        R.f_best = torch.where(imp, f, R.f_best)
        R.grad = g
        R.n_increase.add_(f > R.f_prev)
        R.f_prev = f
        R.no_improve.add_(1).masked_fill_(imp, 0)
        cut = R.no_improve >= cfg.patience
        R.step.mul_(torch.where(cut, cfg.anneal, 1.0))
        R.no_improve.masked_fill_(cut, 0)

    def _retire(self) -> list[Finished]:
        """Finish cases at their last step and drop losing restarts at round ends."""
        plan, R = self.plan, self.rows
        assert R is not None
        finished: list[Finished] = []
        keep_parts = []
        start = 0
        for cid in self.order:
            n, t = self.count[cid], self.t[cid]
            m = torch.ones(n, dtype=torch.bool, device=self.dev)
            if t >= plan.total_steps:
                sl = slice(start, start + n)
                finished.append(
                    Finished(
                        case=cid,
                        x_best=self.to_nchw(R.x_best[sl]),
                        center=self.to_nchw(R.center[sl]),
                        eps=R.eps[sl],
                        restart=R.restart[sl],
                        grad_best=self.to_nchw(R.grad_best[sl]),
                    )
                )
                m[:] = False
            elif t in plan.round_ends:
                n_keep = plan.rows[plan.round_ends.index(t) + 1]
                top = torch.sort(R.f_best[start : start + n], descending=True, stable=True).indices[:n_keep]
                m[:] = False
                m[top] = True
            keep_parts.append(m)
            start += n
        keep = torch.cat(keep_parts)
        for fin in finished:
            self.order.remove(fin.case)
            del self.count[fin.case], self.t[fin.case]
        if not bool(keep.all()):
            self.rows = R = R.select(keep.nonzero().squeeze(1))
            if self.order:  # one fetch for every case's row count, not one per case
                counts = torch.bincount(R.case, minlength=max(self.order) + 1).tolist()
                for cid in self.order:
                    self.count[cid] = counts[cid]
        return finished

    def _case_mask(self, per_case: list[float] | list[bool]) -> Tensor:
        """A per-case value repeated over each case's rows."""
        counts = torch.tensor([self.count[c] for c in self.order], device=self.dev)
        return torch.repeat_interleave(torch.tensor(per_case, device=self.dev), counts)

    def _advance(self) -> None:
        """APGD checkpoints, the projected momentum step, and the end of the big-ball phase."""
        cfg, plan, R = self.cfg, self.plan, self.rows
        assert R is not None
        ts = [self.t[c] for c in self.order]
        if cfg.checkpoints and any(t in plan.checkpoint_len for t in ts):
            self._checkpoint(R, [float(plan.checkpoint_len.get(t, 0)) for t in ts])
        # Projected step with APGD momentum.
        x = R.x
        z = self.stepper.project(self.stepper.step(x, R.grad, R.step), R.center, R.radius)
        a = _bc(torch.where(R.fresh, 1.0, cfg.momentum), x)
        # x + a (z - x) + (1 - a)(x - xp) in two passes: lerp from the extrapolation 2x - xp.
        xn = torch.lerp(R.x_prev, x, 2.0).lerp_(z, a)
        if cfg.momentum < 1.0:
            xn = self.stepper.project(xn, R.center, R.radius)
        R.x_prev, R.x = x, xn
        R.fresh = torch.zeros_like(R.fresh)
        if any(t == plan.switch_step for t in ts):
            self._switch_to_eps_ball(R, self._case_mask([t == plan.switch_step for t in ts]))

    def _checkpoint(self, R: RowState, ck_len_per_case: list[float]) -> None:
        """APGD step control: cut the step and return to the best point where progress stalled."""
        cfg = self.cfg
        cl = self._case_mask(ck_len_per_case)
        ck = cl > 0
        red = ck & ((R.n_increase < cfg.rho * cl) | (~R.reduced_last & (R.f_checkpoint >= R.f_best)))
        R.step = torch.where(red, R.step * cfg.checkpoint_factor, R.step)
        rb = _bc(red, R.x)
        R.x = torch.where(rb, R.x_best, R.x)
        R.grad = torch.where(rb, R.grad_best, R.grad)
        R.x_prev = torch.where(rb, R.x_best, R.x_prev)
        R.reduced_last = torch.where(ck, red, R.reduced_last)
        R.f_checkpoint = torch.where(ck, R.f_best, R.f_checkpoint)
        R.n_increase = torch.where(ck, torch.zeros_like(R.n_increase), R.n_increase)

    def _switch_to_eps_ball(self, R: RowState, sw: Tensor) -> None:
        """Big-ball phase over: continue inside the eps ball from the best big-ball point."""
        sb = _bc(sw, R.x)
        xe = self.stepper.project(R.x_best, R.center, R.eps)
        R.x = torch.where(sb, xe, R.x)
        R.x_prev = torch.where(sb, xe, R.x_prev)
        R.x_best = torch.where(sb, xe, R.x_best)
        R.radius = torch.where(sw, R.eps, R.radius)
        R.step = torch.where(sw, self.cfg.step_init * R.eps, R.step)
        inf = torch.full_like(R.f_best, -float("inf"))
        R.f_best = torch.where(sw, inf, R.f_best)
        R.f_prev = torch.where(sw, inf, R.f_prev)
        R.f_checkpoint = torch.where(sw, inf, R.f_checkpoint)
        R.fresh = sw | R.fresh
        R.reduced_last = sw | R.reduced_last
        R.n_increase = torch.where(sw, torch.zeros_like(R.n_increase), R.n_increase)
        R.no_improve = torch.where(sw, torch.zeros_like(R.no_improve), R.no_improve)

    # -- scoring of quantised candidates -----------------------------------------------------------
    def score(self, x: Tensor, groups: list[int]) -> Tensor:
        """Model outputs (B, n_sites) in float32 without autocast, grouped like the gradient calls."""
        outs, start = [], 0
        sizes = groups if self.cfg.deterministic else [x.shape[0]]
        step = min(self.call_rows, self.cfg.max_batch_rows)
        with torch.no_grad():
            for n in sizes:
                for a in range(start, start + n, step):
                    b = min(a + step, start + n)
                    xin = x[a:b].contiguous(memory_format=torch.channels_last) if self.nhwc else x[a:b]
                    outs.append(self.model(xin).float())
                start += n
        return torch.cat(outs)
