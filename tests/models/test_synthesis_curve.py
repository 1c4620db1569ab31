"""Tests of the epsilon-grid continuation (models/synthesis/curve.py)."""

from __future__ import annotations

import pytest
import torch

from models.synthesis import Case, SynthesisConfig, curve_budgets, synthesize, synthesize_curve
from models.synthesis.curve import curve_stages
from tests.models.test_synthesis import Linear, TinyCNN, grid_images, within_ball

EPS = (0.5, 1.0, 2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grid_cases(n_img: int = 2, sites: tuple[int, ...] = (0, 1)) -> list[Case]:
    return [Case(s, i, e, d) for i in range(n_img) for s in sites for d in (1, -1) for e in EPS]


def test_budgets_cost_one_and_a_half_runs() -> None:
    assert curve_budgets(100, 1) == [100]
    b = curve_budgets(100, 4)
    assert b[0] == 100 and sum(b) <= 150 and len(set(b[1:])) == 1
    assert curve_budgets(2, 4) == [2, 1, 1, 1]  # at least one evaluation per further epsilon


def test_stages_group_site_image_direction_largest_first() -> None:
    cases = grid_cases(1, (0,))
    stages = curve_stages(cases)
    assert [[cases[k].eps for k in st] for st in stages] == [[2.0, 2.0], [1.0, 1.0], [0.5, 0.5]]
    up = curve_stages(cases, "ascending")
    assert [cases[k].eps for k in up[0]] == [0.5, 0.5]
    with pytest.raises(ValueError, match="order"):
        curve_stages(cases, "sideways")


def test_every_epsilon_inside_its_ball_in_case_order() -> None:
    model, images = TinyCNN(), grid_images(2)
    cases = grid_cases() + [Case(2, 1, 0.0, 1)]
    res = synthesize_curve(model, images, cases, SynthesisConfig(restarts=4, budget=40, seed=2))
    within_ball(res, images, cases)
    assert len(res) == len(cases) and res.cases == cases
    d = torch.tensor([c.direction for c in cases], dtype=torch.float32)
    assert (d[:-1] * res.predicted_change[:-1] > 0).all()
    evals = {c.eps: int(n) for c, n in zip(cases, res.n_grad_evals, strict=True)}
    assert evals == {2.0: 40, 1.0: 10, 0.5: 10, 0.0: 0}


def test_warm_start_carries_the_optimum_to_the_next_epsilon() -> None:
    """On a linear model the rescaled optimum is exact: one evaluation per further epsilon suffices,
    where a search from scratch with the same single evaluation stays at the clean image."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 32, 32, generator=g)
    images = torch.full((1, 3, 32, 32), 128 / 255)
    cases = [Case(0, 0, e, d) for d in (1, -1) for e in EPS]
    cfg = SynthesisConfig(restarts=2, budget=6, min_round_steps=2, seed=0)
    assert curve_budgets(6, 3) == [6, 1, 1]
    res = synthesize_curve(Linear(w), images, cases, cfg)
    for k, c in enumerate(cases):
        assert c.direction * float(res.predicted_change[k]) >= 0.98 * c.eps * float(w.norm()), c
    cold = synthesize(Linear(w), images, [Case(0, 0, 0.5, 1)], SynthesisConfig(budget=1))
    assert float(cold.predicted_change[0]) == 0.0


def test_deterministic_curve_is_independent_of_neighbours_and_order() -> None:
    model, images = TinyCNN(), grid_images(3)
    cases = grid_cases(3)
    cfg = SynthesisConfig(restarts=4, budget=30, min_round_steps=4, seed=7, deterministic=True)
    a = synthesize_curve(model, images, cases, cfg)
    perm = torch.randperm(len(cases), generator=torch.Generator().manual_seed(0)).tolist()
    b = synthesize_curve(
        model, images, [cases[k] for k in perm], SynthesisConfig(**{**cfg.__dict__, "max_batch_rows": 7})
    )
    assert torch.equal(a.adv_uint8[perm], b.adv_uint8)
    assert torch.equal(a.f_adv[perm], b.f_adv)


def test_bad_curve_arguments_raise() -> None:
    with pytest.raises(ValueError, match="warm_share"):
        synthesize_curve(TinyCNN(), grid_images(1), [Case(0, 0, 1.0, 1)], warm_share=-1)
    with pytest.raises(ValueError, match="site index"):
        synthesize_curve(TinyCNN(), grid_images(1), [Case(5, 0, 1.0, 1)])
    with pytest.raises(ValueError, match="no cases"):
        synthesize_curve(TinyCNN(), grid_images(1), [])
