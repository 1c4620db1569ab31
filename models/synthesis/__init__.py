"""Synthesis of adversarial and targeted perturbations for IT site models (DESIGN.md section 3).

Public API::

    cfg = SynthesisConfig(restarts=100, steps=20, seed=0, deterministic=True)
    res = synthesize(model, images, [Case(site=3, image=0, eps=1.0, direction=+1)], cfg)
    res.adv_uint8[0]        # (C, H, W) uint8, what the rig shows, inside the eps ball
    res.predicted_change    # f(quantised) - f(clean), per case
"""

from .config import Case, CaseResult, SynthesisCancelled, SynthesisConfig, SynthesisResult
from .curve import curve_budgets, synthesize_curve
from .engine import SiteObjective, derive_seed, plan_for, synthesize
from .projection import project_l2_ball_box, project_l2_ball_box_bisection
from .quantize import QuantizationError, quantize_in_ball
from .schedule import Plan, plan_budget
from .steps import AttackStep, L2BallBoxStep
from .targeted import TargetObjective, synthesize_targeted

__all__ = [
    "AttackStep",
    "Case",
    "CaseResult",
    "L2BallBoxStep",
    "Plan",
    "QuantizationError",
    "SiteObjective",
    "SynthesisCancelled",
    "SynthesisConfig",
    "SynthesisResult",
    "TargetObjective",
    "derive_seed",
    "plan_budget",
    "plan_for",
    "project_l2_ball_box",
    "project_l2_ball_box_bisection",
    "quantize_in_ball",
    "synthesize",
    "synthesize_curve",
    "curve_budgets",
    "synthesize_targeted",
]
