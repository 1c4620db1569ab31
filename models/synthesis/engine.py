"""The synthesis engine: batched projected gradient ascent on site predictions.

Every (case, restart) pair is one *row*; rows of many cases share a batch.  Cases stream through
a pool of ``max_batch_rows`` rows: when successive halving retires restarts (or a case finishes)
new cases are admitted, so the model always sees a full batch.  Each row follows the same plan
(:mod:`models.synthesis.schedule`) and all updates are per row, so a case's result depends only on
the model, its clean image, its epsilon, its seed and the config: not on its neighbours.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .config import Case, SynthesisCancelled, SynthesisConfig, SynthesisResult
from .inputs import derive_seed, module_eval, parse_cases, validate_images
from .quantize import quantize_in_ball
from .schedule import Plan, plan_budget
from .steps import L2BallBoxStep

__all__ = [
    "synthesize",
    "derive_seed",
    "plan_for",
    "Objective",
    "SiteObjective",
    "run_engine",
    "clean_outputs",
    "tuned_calls",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event


class Objective(Protocol):
    """Maps model outputs of rows to the value to maximise and the value to report."""

    def value(self, out: Tensor, case: Tensor) -> Tensor:
        """Objective per row (maximised), from outputs (B, n_sites) and case indices (B,)."""
        ...

    def score(self, out: Tensor, case: Tensor) -> Tensor:
        """Reported value per row (``f``)."""
        ...


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


def _bc(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


_ROW_KEYS = (
    "case",
    "restart",
    "x",
    "xp",
    "g",
    "xb",
    "gb",
    "fb",
    "fprev",
    "step",
    "radius",
    "eps",
    "center",
    "nincr",
    "fck",
    "redl",
    "nonimp",
    "fresh",
)


#: A finished case: (case id, best points, centres, eps, restart ids, gradients at the best points).
_Finished = tuple[int, Tensor, Tensor, Tensor, Tensor, Tensor]


class _Engine:
    """Holds the row pool of one :func:`run_engine` call."""

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        objective: Objective,
        cfg: SynthesisConfig,
        plan: Plan,
    ) -> None:
        self.model, self.obj, self.cfg, self.plan = model, objective, cfg, plan
        self.dev = images.device
        self.stepper = L2BallBoxStep(init_fraction=cfg.init_fraction, deterministic=cfg.deterministic)
        self.images_nchw = images
        start_rows = cfg.model_rows(self.dev, images[0].numel() * images.element_size())
        self.nhwc, self.call_rows = tune_calls(self, images, start_rows)
        # Rows are kept channels-last when the model runs faster so: every row operation is
        # indifferent to the order of a row's pixels, and the model gets a strided view, no copy.
        self.images = images.permute(0, 2, 3, 1).contiguous() if self.nhwc else images
        self.rows: dict[str, Tensor] = {}
        self.admitted: list[dict[str, Tensor]] = []  # joined to the pool at the next step, at once
        self.order: list[int] = []  # active case ids in row order
        self.count: dict[int, int] = {}
        self.t: dict[int, int] = {}

    # -- layout ------------------------------------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        """Rows as the model takes them: (B, C, H, W), channels-last strided if kept so."""
        return x.permute(0, 3, 1, 2) if self.nhwc else x

    def from_model(self, g: Tensor) -> Tensor:
        """A gradient w.r.t. :meth:`to_model`'s view, in the rows' layout."""
        return g.permute(0, 2, 3, 1).contiguous() if self.nhwc else g.contiguous()

    def to_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2).contiguous() if self.nhwc else x

    # -- model calls -------------------------------------------------------------------------------
    def _segments(self, case_rows: Tensor, n: int) -> list[tuple[int, int]]:
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
        for a, b in self._segments(case, x.shape[0]):
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
    def admit(self, cid: int, img: int, eps: float, seed: int) -> None:
        cfg, plan = self.cfg, self.plan
        r0 = plan.rows[0]
        center = self.images[img : img + 1]
        center_nchw = self.images_nchw[img : img + 1]
        r_first = eps * (cfg.first_ball_factor if plan.switch_step > 0 else 1.0)
        rad1 = torch.full((1,), r_first, device=self.dev, dtype=center.dtype)
        gen = torch.Generator(device=self.dev)
        gen.manual_seed(seed)
        n_clean = 1 if cfg.clean_start else 0
        xs = [center.clone()] if n_clean else []
        if r0 > n_clean:
            # Drawn in (C, H, W) order whatever the layout: a seed means one set of starts.
            k = r0 - n_clean
            starts = center_nchw.expand(k, *center_nchw.shape[1:])
            u = self.stepper.random_perturb(starts, rad1.expand(k), gen)
            xs.append(u.permute(0, 2, 3, 1).contiguous() if self.nhwc else u)
        x = torch.cat(xs)
        f = lambda v, dt=torch.float32: torch.full((r0,), v, device=self.dev, dtype=dt)  # noqa: E731
        new = {
            "case": torch.full((r0,), cid, device=self.dev, dtype=torch.long),
            "restart": torch.arange(r0, device=self.dev),
            "x": x,
            "xp": x.clone(),
            "g": torch.zeros_like(x),
            "xb": x.clone(),
            "gb": torch.zeros_like(x),
            "fb": f(-float("inf")),
            "fprev": f(-float("inf")),
            "step": f(cfg.step_init * r_first),
            "radius": f(r_first),
            "eps": f(eps),
            "center": center.expand_as(x).clone(),
            "nincr": f(0),
            "fck": f(-float("inf")),
            "redl": f(1, torch.bool),
            "nonimp": f(0),
            "fresh": f(1, torch.bool),
        }
        self.admitted.append(new)
        self.order.append(cid)
        self.count[cid] = r0
        self.t[cid] = 0

    def n_rows(self) -> int:
        pool = int(self.rows["x"].shape[0]) if self.rows else 0
        return pool + sum(int(a["x"].shape[0]) for a in self.admitted)

    def _join_admitted(self) -> None:
        if self.admitted:
            parts = ([self.rows] if self.rows else []) + self.admitted
            self.rows = {k: torch.cat([p[k] for p in parts]) for k in _ROW_KEYS}
            self.admitted = []

    def keep(self, mask: Tensor) -> None:
        idx = mask.nonzero().squeeze(1)
        self.rows = {k: v.index_select(0, idx) for k, v in self.rows.items()}

    # -- one iteration -----------------------------------------------------------------------------
    def iterate(self) -> list[_Finished]:
        """One gradient evaluation for every row; returns finished cases' candidates."""
        self._join_admitted()
        cfg, plan, R = self.cfg, self.plan, self.rows
        f, g = self.value_and_grad(R["x"], R["case"])
        with torch.no_grad():
            f = torch.nan_to_num(f, nan=-float("inf"))
            imp = f > R["fb"]
            # In place, improved rows only: a full-size ``where`` costs about 3 copies on CPU.
            # Safe because ``xb``/``gb`` never share memory with another pool tensor (admission
            # clones, compaction and the phase switch make new ones).
            up = imp.nonzero().squeeze(1)
            if up.numel():
                R["xb"].index_copy_(0, up, R["x"].index_select(0, up))
                R["gb"].index_copy_(0, up, g.index_select(0, up))
            R["fb"] = torch.where(imp, f, R["fb"])
            R["g"] = g
            R["nincr"] = R["nincr"] + (f > R["fprev"]).float()
            R["fprev"] = f
            R["nonimp"] = torch.where(imp, torch.zeros_like(f), R["nonimp"] + 1)
            cut = R["nonimp"] >= cfg.patience
            R["step"] = torch.where(cut, R["step"] * cfg.anneal, R["step"])
            R["nonimp"] = torch.where(cut, torch.zeros_like(f), R["nonimp"])

            for cid in self.order:
                self.t[cid] += 1
            # Most steps end no round and no case: the keep mask is built only when one does.
            finished: list[_Finished] = []
            if any(self.t[cid] >= plan.total_steps or self.t[cid] in plan.round_ends for cid in self.order):
                finished = self._retire()
            if self.order:
                self._advance()
        return finished

    def _retire(self) -> list[_Finished]:
        """Finish cases at their last step and drop losing restarts at round ends."""
        plan, R = self.plan, self.rows
        finished: list[_Finished] = []
        keep_parts = []
        start = 0
        for cid in self.order:
            n = self.count[cid]
            t = self.t[cid]
            m = torch.ones(n, dtype=torch.bool, device=self.dev)
            if t >= plan.total_steps:
                sl = slice(start, start + n)
                finished.append(
                    (
                        cid,
                        self.to_nchw(R["xb"][sl]),
                        self.to_nchw(R["center"][sl]),
                        R["eps"][sl],
                        R["restart"][sl],
                        self.to_nchw(R["gb"][sl]),
                    )
                )
                m[:] = False
            elif t in plan.round_ends:
                k = plan.round_ends.index(t)
                n_keep = plan.rows[k + 1]
                top = torch.sort(R["fb"][start : start + n], descending=True, stable=True).indices[:n_keep]
                m[:] = False
                m[top] = True
            keep_parts.append(m)
            start += n
        keep = torch.cat(keep_parts)
        for cid, *_ in finished:
            self.order.remove(cid)
            del self.count[cid], self.t[cid]
        if not bool(keep.all()):
            self.keep(keep)
            R = self.rows
            for cid in self.order:
                self.count[cid] = int((R["case"] == cid).sum())
        return finished

    def _advance(self) -> None:
        cfg, plan, R = self.cfg, self.plan, self.rows
        ts = [self.t[c] for c in self.order]
        at_ck = cfg.checkpoints and any(t in plan.checkpoint_len for t in ts)
        at_sw = any(t == plan.switch_step for t in ts)
        if at_ck or at_sw:
            counts = torch.tensor([self.count[c] for c in self.order], device=self.dev)
        x = R["x"]
        if at_ck:
            ck_len = torch.tensor([float(plan.checkpoint_len.get(t, 0)) for t in ts], device=self.dev)
            ck = torch.repeat_interleave(ck_len > 0, counts)
            cl = torch.repeat_interleave(ck_len, counts)
            red = ck & ((R["nincr"] < cfg.rho * cl) | (~R["redl"] & (R["fck"] >= R["fb"])))
            R["step"] = torch.where(red, R["step"] * cfg.checkpoint_factor, R["step"])
            rb = _bc(red, x)
            R["x"] = torch.where(rb, R["xb"], R["x"])
            R["g"] = torch.where(rb, R["gb"], R["g"])
            R["xp"] = torch.where(rb, R["xb"], R["xp"])
            R["redl"] = torch.where(ck, red, R["redl"])
            R["fck"] = torch.where(ck, R["fb"], R["fck"])
            R["nincr"] = torch.where(ck, torch.zeros_like(R["nincr"]), R["nincr"])
        # Projected step with APGD momentum.
        x = R["x"]
        z = self.stepper.project(self.stepper.step(x, R["g"], R["step"]), R["center"], R["radius"])
        mom = torch.full_like(R["step"], cfg.momentum)
        a = _bc(torch.where(R["fresh"], torch.ones_like(mom), mom), x)
        # x + a (z - x) + (1 - a)(x - xp) in two passes: lerp from the extrapolation 2x - xp.
        xn = torch.lerp(torch.lerp(R["xp"], x, 2.0), z, a)
        if cfg.momentum < 1.0:
            xn = self.stepper.project(xn, R["center"], R["radius"])
        R["xp"], R["x"] = x, xn
        R["fresh"] = torch.zeros_like(R["fresh"])
        if at_sw:
            # Big-ball phase over: continue inside the eps ball from the best big-ball point.
            sw_case = torch.tensor([t == plan.switch_step for t in ts], device=self.dev)
            sw = torch.repeat_interleave(sw_case, counts)
            sb = _bc(sw, x)
            xe = self.stepper.project(R["xb"], R["center"], R["eps"])
            R["x"] = torch.where(sb, xe, R["x"])
            R["xp"] = torch.where(sb, xe, R["xp"])
            R["xb"] = torch.where(sb, xe, R["xb"])
            R["radius"] = torch.where(sw, R["eps"], R["radius"])
            R["step"] = torch.where(sw, cfg.step_init * R["eps"], R["step"])
            inf = torch.full_like(R["fb"], -float("inf"))
            for k in ("fb", "fprev", "fck"):
                R[k] = torch.where(sw, inf, R[k])
            R["fresh"] = sw | R["fresh"]
            R["redl"] = sw | R["redl"]
            R["nincr"] = torch.where(sw, torch.zeros_like(R["nincr"]), R["nincr"])
            R["nonimp"] = torch.where(sw, torch.zeros_like(R["nonimp"]), R["nonimp"])

    # -- scoring of quantised candidates -----------------------------------------------------------
    def score(self, x: Tensor, case: Tensor, groups: list[int]) -> Tensor:
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


#: Model-call decisions: {(architecture, image shape, dtype, device, autocast, config): (nhwc, rows)}.
_TUNED: dict[tuple, tuple[bool, int]] = {}

#: Largest CPU call the tuning tries (rows); larger calls never paid off on CPU.
MAX_TUNED_ROWS = 256
#: Time the tuning may spend per model and input shape, in seconds (it stops before a probe
#: that would overrun it).
TUNING_BUDGET_S = 10.0


def architecture_key(model: Callable[[Tensor], Tensor]) -> tuple | None:
    """Class and parameter shapes of a module: models alike in these cost alike per call.

    A night loads fresh model objects, so decisions are keyed by architecture, not identity.
    ``None`` for a plain callable (never cached).
    """
    if not isinstance(model, torch.nn.Module):
        return None
    params = tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters())
    return (type(model).__module__, type(model).__qualname__, params)


def tuned_calls(model: Callable[[Tensor], Tensor]) -> list[tuple[bool, int]]:
    """The (channels-last, rows per call) decisions made so far for this model's architecture."""
    arch = architecture_key(model)
    return [v for k, v in _TUNED.items() if arch is not None and k[0] == arch]


def tune_calls(eng: _Engine, images: Tensor, rows: int) -> tuple[bool, int]:
    """Layout (channels-last or not) and rows per model call: the config's, else the fastest.

    ``SynthesisConfig.channels_last=None`` keeps rows channels-last only if one forward and
    backward call runs clearly faster so: which layout wins depends on the model, the image
    size and the hardware (a small CNN at 32x32 ran 25% faster channels-last on an AVX-512
    Xeon; at 224x224 on an EPYC it ran slower).  ``model_batch_rows=None`` on a CPU starts from
    about 768 KiB of input per call and tries doublings (within ``TUNING_BUDGET_S``), keeping
    the smallest size within 2% of the fastest per row: small CNNs want cache-sized calls,
    bigger backbones often more rows.  The answer is remembered per architecture and input
    shape, so a process decides once.  Deterministic mode never times anything: results must
    not depend on a measurement.
    """
    cfg = eng.cfg
    want_layout = cfg.channels_last is None and images.dim() == 4
    want_rows = cfg.model_batch_rows is None and images.device.type == "cpu"
    if cfg.deterministic or not (want_layout or want_rows):
        return bool(cfg.channels_last), rows
    arch = architecture_key(eng.model)
    key = (
        arch,
        tuple(images.shape[1:]),
        images.dtype,
        str(images.device),
        cfg.autocast_dtype,
        cfg.channels_last,
        cfg.model_batch_rows,
    )
    if arch is None:
        return _time_calls(eng, images, rows, want_layout, want_rows)
    if key not in _TUNED:
        _TUNED[key] = _time_calls(eng, images, rows, want_layout, want_rows)
    return _TUNED[key]


def _time_calls(
    eng: _Engine, images: Tensor, rows: int, want_layout: bool, want_rows: bool
) -> tuple[bool, int]:
    sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
    t_start = time.perf_counter()
    inputs: dict[tuple[bool, int], Tensor] = {}

    def once(nhwc: bool, n: int) -> float:
        """Seconds per row of one forward and backward call of ``n`` rows."""
        if (nhwc, n) not in inputs:
            x = images[:1].expand(n, *images.shape[1:])
            inputs[nhwc, n] = x.contiguous(memory_format=torch.channels_last) if nhwc else x.contiguous()
        xs = inputs[nhwc, n].detach().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        with torch.enable_grad():
            torch.autograd.grad(eng._forward(xs).sum(), xs)
        sync()
        return (time.perf_counter() - t0) / n

    def best(keys: list[tuple[bool, int]], reps: int = 3) -> dict[tuple[bool, int], float]:
        """Best of ``reps`` after a warm-up, the keys interleaved (fair under drifting load)."""
        for k in keys:
            once(*k)
        out = dict.fromkeys(keys, math.inf)
        for _ in range(reps):
            for k in keys:
                out[k] = min(out[k], once(*k))
        return out

    nhwc = bool(eng.cfg.channels_last)
    if want_layout:
        probe = max(1, min(rows, MAX_TUNED_ROWS, 64))
        t = best([(False, probe), (True, probe)])
        nhwc = t[True, probe] < 0.95 * t[False, probe]
    if want_rows:
        # Double while affordable and not clearly worse; take the smallest size within 2% of
        # the fastest (gains of a few percent per doubling add up: 8% from 2 to 8 rows on one
        # CNN at 224x224, channels-last).
        costs = {rows: best([(nhwc, rows)])[nhwc, rows]}
        n = 2 * rows
        spent = time.perf_counter() - t_start
        while n <= MAX_TUNED_ROWS and spent + 4 * n * costs[n // 2] < TUNING_BUDGET_S:
            costs[n] = best([(nhwc, n)])[nhwc, n]
            if costs[n] > 1.1 * min(costs.values()):
                break
            n *= 2
            spent = time.perf_counter() - t_start
        fastest = min(costs.values())
        rows = min(k for k, c in costs.items() if c <= 1.02 * fastest)
        logger.debug("synthesis: seconds per row by call size %s", {k: round(c, 5) for k, c in costs.items()})
    logger.info(
        "synthesis: model calls tuned in %.1f s: %s, %d rows per call",
        time.perf_counter() - t_start,
        "channels-last" if nhwc else "NCHW",
        rows,
    )
    return nhwc, rows


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


def run_engine(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    case_image: Sequence[int],
    case_eps: Sequence[float],
    case_seed: Sequence[int],
    objective: Objective,
    config: SynthesisConfig,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    cases: list[Case] | None = None,
    clean_out: Tensor | None = None,
) -> SynthesisResult:
    """Solve validated cases with ``objective``; see :func:`synthesize` for the contract.

    ``clean_out`` (N, n_sites): the model's outputs on ``images`` when the caller has them.
    """
    plan = plan_for(config)
    m = len(case_image)
    dev = images.device
    out_clean_img = clean_outputs(model, images, config.max_batch_rows) if clean_out is None else clean_out
    ci = torch.as_tensor(list(case_image), dtype=torch.long, device=dev)
    out_clean = out_clean_img[ci]
    f_clean = objective.score(out_clean, torch.arange(m, device=dev)).cpu()
    shape = (m,) + tuple(images.shape[1:])
    adv_q = torch.zeros(shape, dtype=torch.uint8)
    adv_f = torch.zeros(shape, dtype=torch.float32) if config.keep_float else None
    delta = torch.zeros(m, dtype=torch.float64)
    f_adv = torch.zeros(m)
    out_adv = torch.zeros(m, out_clean.shape[1])
    win = torch.zeros(m, dtype=torch.long)
    nev = torch.zeros(m, dtype=torch.long)
    eng = _Engine(model, images, objective, config, plan)
    done = 0

    def finalize(items: list[_Finished]) -> None:
        nonlocal done
        if not items:
            return
        xb = torch.cat([it[1] for it in items])
        centers = torch.cat([it[2] for it in items])
        grads = torch.cat([it[5] for it in items])
        q, d = quantize_in_ball(xb, centers, torch.cat([it[3] for it in items]), grads)
        groups = [it[1].shape[0] for it in items]
        case_rows = torch.cat(
            [
                torch.full((n,), it[0], device=dev, dtype=torch.long)
                for n, it in zip(groups, items, strict=True)
            ]
        )
        out = eng.score(q.float() / 255.0, case_rows, groups)
        val = objective.value(out, case_rows)
        start = 0
        for n, (cid, xbi, _c, _e, rest, _g) in zip(groups, items, strict=True):
            j = start + int(torch.argmax(val[start : start + n]))  # first maximum: lowest restart
            adv_q[cid] = q[j].cpu()
            if adv_f is not None:
                adv_f[cid] = xbi[j - start].float().cpu()
            delta[cid] = d[j].cpu()
            out_adv[cid] = out[j].cpu()
            win[cid] = int(rest[j - start])
            start += n
        done += len(items)
        logger.debug("synthesis: %d/%d cases done (%d rows live)", done, m, eng.n_rows())
        if progress is not None:
            progress(done, m)

    pending = deque(range(m))
    stack = contextlib.ExitStack()
    if config.deterministic and dev.type == "cuda":
        stack.enter_context(_cudnn_deterministic())
    with stack:
        while pending or eng.order:
            if _is_cancelled(cancel):
                raise SynthesisCancelled(f"synthesis cancelled after {done}/{m} cases")
            zero: list[_Finished] = []
            while pending and (eng.n_rows() + plan.rows[0] <= config.max_batch_rows or not eng.order):
                cid = pending.popleft()
                img, eps = int(case_image[cid]), float(case_eps[cid])
                if eps == 0.0:
                    c = images[img : img + 1]
                    zero.append(
                        (
                            cid,
                            c,
                            c,
                            torch.zeros(1, device=dev, dtype=c.dtype),
                            torch.zeros(1, device=dev, dtype=torch.long),
                            torch.zeros_like(c),
                        )
                    )
                    continue
                eng.admit(cid, img, eps, int(case_seed[cid]))
                nev[cid] = plan.budget
                logger.debug("synthesis: admitted case %d (%d rows live)", cid, eng.n_rows())
            finalize(zero)
            if eng.order:
                finalize(eng.iterate())
    f_adv = objective.score(out_adv.to(dev), torch.arange(m, device=dev)).cpu()
    pc = f_adv - f_clean
    return SynthesisResult(
        cases=cases or [],
        adv_uint8=adv_q,
        adv=adv_f,
        delta_l2=delta,
        f_clean=f_clean,
        f_adv=f_adv,
        predicted_change=pc,
        out_clean=out_clean.cpu(),
        out_adv=out_adv,
        winning_restart=win,
        seed=torch.as_tensor(list(case_seed), dtype=torch.long),
        n_grad_evals=nev,
        extras={"plan": plan},
    )


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
    cfg.validate()
    validate_images(images)
    cl = parse_cases(cases)
    if not cl:
        raise ValueError("no cases given")
    n_img = images.shape[0]
    for k, c in enumerate(cl):
        if not (0 <= c.image < n_img):
            raise ValueError(f"case {k}: image index {c.image} out of range [0, {n_img})")
        if not np.isfinite(c.eps) or c.eps < 0:
            raise ValueError(f"case {k}: eps must be finite and >= 0, got {c.eps}")
        if c.direction not in (1, -1):
            raise ValueError(f"case {k}: direction must be +1 (up) or -1 (down), got {c.direction}")
    with module_eval(model), torch.no_grad():
        out = model(images[:1])
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(
            f"model must map (B, C, H, W) to (B, n_sites); got output shape {getattr(out, 'shape', None)}"
        )
    n_sites = out.shape[1]
    for k, c in enumerate(cl):
        if not (0 <= c.site < n_sites):
            raise ValueError(f"case {k}: site index {c.site} out of range [0, {n_sites})")
    dev = images.device
    obj = SiteObjective(
        torch.tensor([c.site for c in cl], device=dev), torch.tensor([c.direction for c in cl], device=dev)
    )
    seeds = [
        c.seed if c.seed is not None else derive_seed(cfg.seed, c.site, c.image, float(c.eps), c.direction)
        for c in cl
    ]
    with module_eval(model):
        return run_engine(
            model,
            images,
            [c.image for c in cl],
            [c.eps for c in cl],
            seeds,
            obj,
            cfg,
            progress,
            cancel,
            cases=cl,
            clean_out=clean_outputs(model, images, cfg.max_batch_rows, first=out),
        )
