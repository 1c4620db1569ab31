"""Targeted synthesis: push the whole predicted population response toward a target.

Used for "super-stimuli" (the paper: eps = 10 gives responses beyond any clean image): instead of
one site up or down, maximise the projection of ``f(x + delta)`` onto a target direction in site
space, or minimise the distance to a target response pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import SynthesisConfig, SynthesisResult
from .engine import Cancel, EngineCase, Progress, clean_outputs, run_engine
from .inputs import check_eps, check_model_output, derive_seed, module_eval, validate_call

__all__ = ["TargetObjective", "synthesize_targeted"]


class TargetObjective:
    """Score ``<f, u>`` with ``u = target / ||target||`` (``"direction"``) or ``-||f - target||``
    (``"pattern"``); both are maximised, so larger is closer to the target."""

    def __init__(self, target: Tensor, mode: str) -> None:
        self.mode = mode
        self.target = target / target.norm().clamp_min(1e-12) if mode == "direction" else target

    def score(self, out: Tensor, case: Tensor) -> Tensor:
        t = self.target.to(out.dtype)
        if self.mode == "direction":
            return out @ t
        return -(out - t).norm(dim=1)

    def value(self, out: Tensor, case: Tensor) -> Tensor:
        return self.score(out, case)


def synthesize_targeted(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    target: Tensor,
    eps: float | Sequence[float],
    config: SynthesisConfig | None = None,
    *,
    mode: str = "direction",
    image_indices: Sequence[int] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> SynthesisResult:
    """Perturb each image within ``eps`` so the predicted population response moves toward ``target``.

    Parameters
    ----------
    model : nn.Module or callable
        Images (B, C, H, W) in [0, 1] to predictions (B, n_sites).
    images : Tensor of shape (N, C, H, W)
    target : Tensor of shape (n_sites,)
        A direction in site space (``mode="direction"``: maximise the projection onto it, e.g. a
        one-hot for a single site or a category's mean response) or a response pattern
        (``mode="pattern"``: minimise the Euclidean distance to it).
    eps : float or sequence of float
        One radius for all cases or one per case.
    config : SynthesisConfig, optional
    mode : {"direction", "pattern"}
    image_indices : sequence of int, optional
        Images to perturb (default: all), one case each.
    progress, cancel : see :func:`models.synthesis.synthesize`

    Returns
    -------
    SynthesisResult
        ``f_clean`` / ``f_adv`` hold the target score (projection, or minus the distance), and
        ``out_clean`` / ``out_adv`` the full predicted responses.  ``cases`` is empty.
    """
    cfg = config or SynthesisConfig()
    validate_call(cfg, images)
    if mode not in ("direction", "pattern"):
        raise ValueError(f"mode must be 'direction' or 'pattern', got {mode!r}")
    idx = list(range(images.shape[0])) if image_indices is None else [int(i) for i in image_indices]
    if not idx:
        raise ValueError("no images to perturb")
    if any(not (0 <= i < images.shape[0]) for i in idx):
        raise ValueError(f"image index out of range [0, {images.shape[0]})")
    eps_l = [float(eps)] * len(idx) if np.isscalar(eps) else [float(e) for e in eps]  # type: ignore[union-attr, arg-type]
    if len(eps_l) != len(idx):
        raise ValueError("eps must be a scalar or one value per image index")
    for e in eps_l:
        check_eps(e)
    target = torch.as_tensor(target, dtype=torch.float32, device=images.device)
    if target.dim() != 1 or not bool(torch.isfinite(target).all()):
        raise ValueError("target must be a finite 1-D tensor of shape (n_sites,)")
    with module_eval(model):
        out = check_model_output(model, images)
        if out.shape[1] != target.shape[0]:
            raise ValueError(
                f"target has {target.shape[0]} entries but the model predicts {tuple(out.shape)}"
            )
        if mode == "direction" and float(target.norm()) == 0.0:
            raise ValueError("target direction must be non-zero")
        obj = TargetObjective(target, mode)
        tkey = int(np.frombuffer(target.cpu().numpy().tobytes(), dtype=np.uint8).astype(np.int64).sum())
        cases = [
            EngineCase(image=i, eps=e, seed=derive_seed(cfg.seed, -1, i, e, tkey))
            for i, e in zip(idx, eps_l, strict=True)
        ]
        clean_out = clean_outputs(model, images, cfg.max_batch_rows, first=out)
        return run_engine(
            model, images, cases, obj, cfg, progress=progress, cancel=cancel, clean_out=clean_out
        )
