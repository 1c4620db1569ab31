"""Input checks and small helpers shared by :func:`synthesize` and :func:`synthesize_targeted`."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import Case, SynthesisConfig

__all__ = [
    "check_cases",
    "check_eps",
    "check_model_output",
    "derive_seed",
    "module_eval",
    "parse_cases",
    "validate_call",
    "validate_images",
]


def derive_seed(base: int, *parts: float | int) -> int:
    """A 63-bit seed from the base seed and a case's content (order-independent of other cases)."""
    ints = [int(base) & 0xFFFFFFFFFFFFFFFF]
    for p in parts:
        if isinstance(p, float):
            ints.append(struct.unpack("<Q", struct.pack("<d", p))[0])
        else:
            ints.append(int(p) & 0xFFFFFFFFFFFFFFFF)
    s = np.random.SeedSequence(ints).generate_state(2, dtype=np.uint32)
    return int((int(s[0]) << 31) ^ int(s[1])) & 0x7FFFFFFFFFFFFFFF


def module_eval(model: Callable[[Tensor], Tensor]) -> contextlib.AbstractContextManager[None]:
    module = model if isinstance(model, nn.Module) else None

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        was = module is not None and module.training
        if module is not None and was:
            module.eval()
        try:
            yield
        finally:
            if module is not None and was:
                module.train()

    return ctx()


def validate_images(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is a finite float (N, C, H, W) tensor in [0, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError("images must be a torch.Tensor of shape (N, C, H, W)")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError("images must lie in [0, 1] (got values outside)")


def parse_cases(cases: Sequence[Case] | tuple[object, object, object, object]) -> list[Case]:
    if isinstance(cases, tuple) and len(cases) == 4 and not isinstance(cases[0], Case):
        cols = [torch.as_tensor(c).reshape(-1).tolist() for c in cases]
        n = len(cols[0])
        if any(len(c) != n for c in cols):
            raise ValueError("case columns (site_idx, image_idx, eps, direction) must have equal lengths")
        return [Case(int(s), int(i), float(e), int(d)) for s, i, e, d in zip(*cols, strict=True)]
    out = [c for c in cases if isinstance(c, Case)]
    if len(out) != len(cases):
        raise ValueError("cases must be a list of Case or a tuple (site_idx, image_idx, eps, direction)")
    return out


def validate_call(cfg: SynthesisConfig, images: Tensor) -> None:
    """The checks every entry point makes first: a consistent config and valid images."""
    cfg.validate()
    validate_images(images)


def check_eps(eps: float, where: str = "") -> None:
    """Raise ValueError unless ``eps`` is a finite radius ``>= 0``."""
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"{where}eps must be finite and >= 0, got {eps}")


def check_cases(cases: list[Case], n_images: int) -> None:
    """Raise ValueError on an empty list or a case whose image, eps or direction is invalid."""
    if not cases:
        raise ValueError("no cases given")
    for k, c in enumerate(cases):
        if not (0 <= c.image < n_images):
            raise ValueError(f"case {k}: image index {c.image} out of range [0, {n_images})")
        check_eps(c.eps, f"case {k}: ")
        if c.direction not in (1, -1):
            raise ValueError(f"case {k}: direction must be +1 (up) or -1 (down), got {c.direction}")


def check_model_output(model: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """The model's output on image 0 (B=1, n_sites), after checking it maps images to sites."""
    with torch.no_grad():
        out = model(images[:1])
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(
            f"model must map (B, C, H, W) to (B, n_sites); got output shape {getattr(out, 'shape', None)}"
        )
    return out
