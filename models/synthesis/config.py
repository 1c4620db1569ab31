"""Configuration, cases and results of the synthesis engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Input bytes per model call on a CPU (see ``SynthesisConfig.model_batch_rows``).
CPU_CALL_INPUT_BYTES = 768 * 1024

__all__ = ["SynthesisConfig", "Case", "CaseResult", "SynthesisResult", "SynthesisCancelled"]


class SynthesisCancelled(RuntimeError):
    """Raised when the caller's cancel hook fires; partial work is discarded."""


@dataclass
class SynthesisConfig:
    """Options of the synthesis engine (the paper's recipe plus the APGD-class extensions).

    Parameters
    ----------
    restarts : int
        Upper bound on independent random restarts per case (the paper: 100).  Fewer are started
        when the budget cannot give each of them ``min_round_steps`` steps.
    steps : int
        Steps per restart; only used to derive the default budget ``restarts * steps``.
    budget : int or None
        Gradient evaluations per case; ``None`` means ``restarts * steps``.
    first_ball_factor : float
        The paper searches the ``first_ball_factor * eps`` ball first (2.0), then continues from the
        projection of the best point inside the eps ball.  1.0 disables the big-ball phase.
    first_ball_fraction : float
        Fraction of a surviving restart's steps spent in the big ball (kept inside the first round
        so that successive halving always ranks restarts on eps-ball values).
    step_init : float
        Initial step size as a multiple of the current ball radius (the paper: start at eps).
    anneal, patience : float, int
        The paper's annealing: multiply the step by ``anneal`` after ``patience`` consecutive
        steps without a new best.  ``anneal=1`` disables it.
    momentum : float
        APGD heavy-ball weight on the projected step (0.75 in APGD; 1.0 = no momentum).
    checkpoints, rho, checkpoint_factor : bool, float, float
        APGD step control: at checkpoints, cut the step by ``checkpoint_factor`` and return to the
        best point if fewer than ``rho`` of the recent steps improved or the best stalled.
    successive_halving, halving_eta, min_round_steps : bool, int, int
        Drop all but the best ``1 / eta`` restarts of each case after every round; rounds share the
        budget equally and the first round gives each restart at least ``min_round_steps`` steps.
    clean_start : bool
        Restart 0 starts at the clean image, where the gradient is exactly the model's local
        sensitivity; the others start at random points on the sphere.
    init_fraction : float
        Random starts lie on the sphere of ``init_fraction`` times the first ball radius.
    seed : int
        Base seed; each case's seed is derived from it and the case content (or given per case).
    deterministic : bool
        Bit-identical results on re-runs on the same hardware, independent of chunking: the model
        is called once per case (fixed shapes) and cuDNN runs in deterministic mode.
    max_batch_rows : int
        Memory budget: rows (case x restart) held in one batch.  Cases stream into freed rows as
        successive halving retires restarts, so the batch stays full.
    model_batch_rows : int or None
        Rows per forward/backward call of the model.  ``None``: all rows at once on a GPU.  On a
        CPU, about 768 KiB of input (at least 2 rows), because small CNNs slow down 2-3x per row
        once a batch's activations fall out of cache (one thread, a small CNN: 4,700 rows/s at
        24-64 rows of 3x32x32 against 1,500 at 512); outside deterministic mode doublings of
        that size are timed once per architecture and image shape, and the smallest within 2%
        of the fastest per row is used (bigger backbones often want more rows).
    autocast_dtype : torch.dtype or None
        Run the model's forward under autocast in this dtype (e.g. ``torch.bfloat16``); the
        perturbation, projection and the final scoring of quantised images stay in float32.
    channels_last : bool or None
        Keep the rows channels-last and feed the model channels-last inputs (converting the model
        too may add to the speed-up).  ``None``: timed once per architecture and image shape,
        and used only if clearly faster; in deterministic mode ``None`` means no.
    keep_float : bool
        Also return the float optimum per case (memory heavy at paper scale).
    """

    restarts: int = 100
    steps: int = 20
    budget: int | None = None
    first_ball_factor: float = 2.0
    first_ball_fraction: float = 0.1
    step_init: float = 1.0
    anneal: float = 0.9
    patience: int = 3
    momentum: float = 0.75
    checkpoints: bool = True
    rho: float = 0.75
    checkpoint_factor: float = 0.5
    successive_halving: bool = True
    halving_eta: int = 2
    min_round_steps: int = 10
    clean_start: bool = True
    init_fraction: float = 1.0
    seed: int = 0
    deterministic: bool = False
    max_batch_rows: int = 256
    model_batch_rows: int | None = None
    autocast_dtype: torch.dtype | None = None
    channels_last: bool | None = None
    keep_float: bool = True

    def total_budget(self) -> int:
        """Gradient evaluations per case requested by this config."""
        return int(self.budget) if self.budget is not None else int(self.restarts * self.steps)

    def validate(self) -> None:
        """Raise ValueError on inconsistent options."""
        if self.restarts < 1 or self.steps < 1:
            raise ValueError("restarts and steps must be >= 1")
        if self.budget is not None and self.budget < 1:
            raise ValueError("budget must be >= 1 gradient evaluation per case")
        if not (self.first_ball_factor >= 1.0):
            raise ValueError("first_ball_factor must be >= 1")
        if not (0.0 <= self.first_ball_fraction < 1.0):
            raise ValueError("first_ball_fraction must be in [0, 1)")
        if not (0.0 < self.anneal <= 1.0) or not (0.0 < self.checkpoint_factor <= 1.0):
            raise ValueError("anneal and checkpoint_factor must be in (0, 1]")
        if not (0.0 < self.momentum <= 1.0):
            raise ValueError("momentum must be in (0, 1]")
        if self.halving_eta < 2 or self.min_round_steps < 1 or self.patience < 1:
            raise ValueError("halving_eta >= 2, min_round_steps >= 1 and patience >= 1 required")
        if self.max_batch_rows < 1 or self.step_init <= 0:
            raise ValueError("max_batch_rows >= 1 and step_init > 0 required")
        if self.model_batch_rows is not None and self.model_batch_rows < 1:
            raise ValueError("model_batch_rows must be >= 1 (or None for the automatic choice)")

    def model_rows(self, device: torch.device, row_bytes: int) -> int:
        """Rows per model call on ``device`` for inputs of ``row_bytes`` bytes per row."""
        # Never derived from max_batch_rows: deterministic results must not depend on it.
        if self.model_batch_rows is not None:
            return self.model_batch_rows
        if device.type != "cpu":
            return 2**31 - 1  # the whole pool (or, deterministic, a whole case) per call
        return max(2, CPU_CALL_INPUT_BYTES // max(row_bytes, 1))


@dataclass(frozen=True)
class Case:
    """One synthesis problem: push ``site`` on clean image ``image`` by at most ``eps`` (L2).

    ``direction`` is +1 (up: maximise f_site) or -1 (down).  ``seed`` overrides the derived seed.
    """

    site: int
    image: int
    eps: float
    direction: int
    seed: int | None = None


@dataclass
class CaseResult:
    """Result of one case (see :class:`SynthesisResult` for the fields)."""

    case: Case
    adv_uint8: Tensor
    adv: Tensor | None
    delta_l2: float
    f_clean: float
    f_adv: float
    predicted_change: float
    winning_restart: int
    seed: int
    n_grad_evals: int


@dataclass
class SynthesisResult:
    """Batched results, one row per case, on the CPU.

    Attributes
    ----------
    cases : list of Case
    adv_uint8 : Tensor of shape (n_cases, C, H, W), uint8
        The image the rig will show: ``||adv_uint8 / 255 - clean||_2 <= eps`` holds (float64).
    adv : Tensor of shape (n_cases, C, H, W) or None
        The float optimum before quantisation (``keep_float``).
    delta_l2 : Tensor of shape (n_cases,), float64
        Achieved L2 norm of ``adv_uint8 / 255 - clean``.
    f_clean, f_adv : Tensor of shape (n_cases,)
        Model prediction (site cases) or target score (targeted) on the clean image and on the
        *quantised* image, in float32 without autocast.
    predicted_change : Tensor of shape (n_cases,)
        ``f_adv - f_clean``.
    out_clean, out_adv : Tensor of shape (n_cases, n_sites)
        Full model outputs on the clean and quantised images.
    winning_restart, seed, n_grad_evals : Tensor of shape (n_cases,), int64
    """

    cases: list[Case]
    adv_uint8: Tensor
    adv: Tensor | None
    delta_l2: Tensor
    f_clean: Tensor
    f_adv: Tensor
    predicted_change: Tensor
    out_clean: Tensor
    out_adv: Tensor
    winning_restart: Tensor
    seed: Tensor
    n_grad_evals: Tensor
    extras: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> CaseResult:
        return CaseResult(
            case=self.cases[i],
            adv_uint8=self.adv_uint8[i],
            adv=None if self.adv is None else self.adv[i],
            delta_l2=float(self.delta_l2[i]),
            f_clean=float(self.f_clean[i]),
            f_adv=float(self.f_adv[i]),
            predicted_change=float(self.predicted_change[i]),
            winning_restart=int(self.winning_restart[i]),
            seed=int(self.seed[i]),
            n_grad_evals=int(self.n_grad_evals[i]),
        )
