"""Model-call tuning: memory layout and rows per forward/backward call, decided once per architecture.

Which layout (channels-last or not) and which call size run fastest depends on the model, the
image size and the hardware, so outside deterministic mode they are timed once per process and
architecture; deterministic mode never times anything (results must not depend on a
measurement).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .config import SynthesisConfig

__all__ = ["MAX_TUNED_ROWS", "TUNING_BUDGET_S", "architecture_key", "tune_calls", "tuned_calls"]

logger = logging.getLogger(__name__)

#: Model-call decisions: {(architecture, image shape, dtype, device, autocast, config): (nhwc, rows)}.
_TUNED: dict[tuple, tuple[bool, int]] = {}

#: Largest CPU call the tuning tries (rows); larger calls never paid off on CPU.
MAX_TUNED_ROWS = 256
#: Time the tuning may spend per model and input shape, in seconds (it stops before a probe
#: that would overrun it).
TUNING_BUDGET_S = 10.0

Forward = Callable[[Tensor], Tensor]


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


def tune_calls(
    model: Callable[[Tensor], Tensor], forward: Forward, cfg: SynthesisConfig, images: Tensor, rows: int
) -> tuple[bool, int]:
    """Layout (channels-last or not) and rows per model call: the config's, else the fastest.

    ``SynthesisConfig.channels_last=None`` keeps rows channels-last only if one forward and
    backward call runs clearly faster so: which layout wins depends on the model, the image
    size and the hardware (a small CNN at 32x32 ran 25% faster channels-last on an AVX-512
    Xeon; at 224x224 on an EPYC it ran slower).  ``model_batch_rows=None`` on a CPU starts from
    about 768 KiB of input per call and tries doublings (within ``TUNING_BUDGET_S``), keeping
    the smallest size within 2% of the fastest per row: small CNNs want cache-sized calls,
    bigger backbones often more rows.  The answer is remembered per architecture and input
    shape, so a process decides once.  ``forward`` is the engine's model call (autocast
    included), ``model`` only names the architecture.
    """
    want_layout = cfg.channels_last is None and images.dim() == 4
    want_rows = cfg.model_batch_rows is None and images.device.type == "cpu"
    if cfg.deterministic or not (want_layout or want_rows):
        return bool(cfg.channels_last), rows
    arch = architecture_key(model)
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
        return _time_calls(forward, cfg, images, rows, want_layout, want_rows)
    if key not in _TUNED:
        _TUNED[key] = _time_calls(forward, cfg, images, rows, want_layout, want_rows)
    return _TUNED[key]


class _Timer:
    """Seconds per row of one forward and backward call, best of a few, inputs made once."""

    def __init__(self, forward: Forward, images: Tensor) -> None:
        self.forward, self.images = forward, images
        self.sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
        self.inputs: dict[tuple[bool, int], Tensor] = {}

    def once(self, nhwc: bool, n: int) -> float:
        if (nhwc, n) not in self.inputs:
            x = self.images[:1].expand(n, *self.images.shape[1:])
            self.inputs[nhwc, n] = x.contiguous(memory_format=torch.channels_last) if nhwc else x.contiguous()
        xs = self.inputs[nhwc, n].detach().requires_grad_(True)
        self.sync()
        t0 = time.perf_counter()
        with torch.enable_grad():
            torch.autograd.grad(self.forward(xs).sum(), xs)
        self.sync()
        return (time.perf_counter() - t0) / n

    def best(self, keys: list[tuple[bool, int]], reps: int = 3) -> dict[tuple[bool, int], float]:
        """Best of ``reps`` after a warm-up, the keys interleaved (fair under drifting load)."""
        for k in keys:
            self.once(*k)
        out = dict.fromkeys(keys, math.inf)
        for _ in range(reps):
            for k in keys:
                out[k] = min(out[k], self.once(*k))
        return out


def _time_calls(
    forward: Forward, cfg: SynthesisConfig, images: Tensor, rows: int, want_layout: bool, want_rows: bool
) -> tuple[bool, int]:
    t_start = time.perf_counter()
    timer = _Timer(forward, images)
    nhwc = bool(cfg.channels_last)
    if want_layout:
        probe = max(1, min(rows, MAX_TUNED_ROWS, 64))
        t = timer.best([(False, probe), (True, probe)])
        nhwc = t[True, probe] < 0.95 * t[False, probe]
    if want_rows:
        # Double while affordable and not clearly worse; take the smallest size within 2% of
        # the fastest (gains of a few percent per doubling add up: 8% from 2 to 8 rows on one
        # CNN at 224x224, channels-last).
        costs = {rows: timer.best([(nhwc, rows)])[nhwc, rows]}
        n = 2 * rows
        spent = time.perf_counter() - t_start
        while n <= MAX_TUNED_ROWS and spent + 4 * n * costs[n // 2] < TUNING_BUDGET_S:
            costs[n] = timer.best([(nhwc, n)])[nhwc, n]
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
