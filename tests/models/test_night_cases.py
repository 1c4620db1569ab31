"""What a night attacks and how (models.cases, models.twins, models.random_direction,
models.model_sensitivity, models.candidate_fit), on tiny linear models: no database, no worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.blended_readout import BlendedReadout
from models.candidate_fit import fit_candidate, fit_site_readout
from models.cases import (
    ShardSpec,
    choose_images,
    plan_shard,
    preferred_category,
    random_cases,
    site_seed,
)
from models.factorized_readout import FactorizedRidgeCV
from models.model_sensitivity import align_sites, model_own_sensitivity, sensitivity_cases
from models.random_direction import random_direction
from models.readout import MultiRidgeCV, one_per_group
from models.synthesis import SynthesisConfig
from models.twins import make_twins

SITES = ["a", "b", "c"]
CATS = ["face", "face", "body", "body", "car", "car", None, "car"]


def _encoder(n_sites: int = 3, size: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, n_sites)).eval()


def _pool(n: int = len(CATS), size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2


# --- seeds and image choice ----------------------------------------------------------------------


def test_site_seed_is_content_only_and_fits_the_lineage_column() -> None:
    # pinned: a change here changes every image a night has ever made
    assert site_seed(0, "s1") == 698863899
    assert site_seed(7, "s1", "random:2:3:1.0") == 34511028
    seeds = {site_seed(s, f"site{i}", salt) for s in range(3) for i in range(20) for salt in ("", "x")}
    assert len(seeds) == 120 and all(0 <= x < 2**31 for x in seeds)


def test_choose_images_is_seeded_distinct_and_capped() -> None:
    picks = choose_images(10, 4, seed=3)
    assert picks == sorted(set(picks)) and len(picks) == 4 and picks == choose_images(10, 4, seed=3)
    assert choose_images(10, 4, seed=3) != choose_images(10, 4, seed=4)
    assert choose_images(3, 9, seed=0) == [0, 1, 2]


def test_preferred_category_is_the_highest_predicted_mean() -> None:
    scores = torch.tensor([1.0, 1.0, 5.0, 0.0, 2.0, 2.0, 99.0, 2.0])  # body mean 2.5 > car 2 > face 1
    assert preferred_category(scores, CATS) == "body"  # the uncategorised 99 is ignored
    assert preferred_category(scores, ["x"] * 7 + [None]) is None  # nothing to prefer it over


# --- a shard's plan ------------------------------------------------------------------------------


def _spec(**kw: object) -> ShardSpec:
    base = {"seed": 5, "clean_per_site": 3, "epsilons": [0.5, 1.0], "directions": ("up", "down")}
    return ShardSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_guided_cases_cover_picks_epsilons_and_directions_with_shared_rows() -> None:
    plan = plan_shard(["b", "c"], SITES, _spec(), CATS)
    assert len(plan.guided) == 2 * 3 * 2 * 2
    assert {c.site for c in plan.guided} == {1, 2}
    assert len(plan.rows) == len(set(plan.rows))  # a pool image used by two sites is one row
    for c in plan.guided:
        assert c.direction in (1, -1) and 0 <= c.seed < 2**31
    assert plan.targeted == [] and plan.random == []  # no f_pool, no random_per_site


def test_slots_split_a_sites_cases_between_shards_without_overlap() -> None:
    whole = plan_shard(["a"], SITES, _spec(), CATS)
    first = plan_shard(["a"], SITES, _spec(slots=(0, 1)), CATS)
    rest = plan_shard(["a"], SITES, _spec(slots=(1, 3)), CATS)

    def keys(plan):  # (pool image, eps, direction, seed): independent of row numbering
        return {(plan.rows[c.image], c.eps, c.direction, c.seed) for c in plan.guided}

    assert keys(first) | keys(rest) == keys(whole) and not keys(first) & keys(rest)


def test_targeted_cases_push_other_categories_toward_the_preferred_one() -> None:
    f_pool = torch.zeros(len(CATS), 3)
    f_pool[[4, 5, 7], 0] = 3.0  # site a prefers cars
    spec = _spec(targeted_epsilons=[2.0], targeted_per_site=2)
    plan = plan_shard(["a"], SITES, spec, CATS, f_pool)
    assert len(plan.targeted) == 2
    for t in plan.targeted:
        assert t.category == "car" and CATS[plan.rows[t.image]] != "car"
        assert t.direction[0] > 0  # toward the cars' mean prediction
    assert plan_shard(["a"], SITES, ShardSpec(**{**vars(spec), "extras": False}), CATS, f_pool).targeted == []


def test_random_cases_change_with_the_day_only() -> None:
    day1 = random_cases(["a"], SITES, _spec(random_per_site=2, day=1), len(CATS))
    again = random_cases(["a"], SITES, _spec(random_per_site=2, day=1), len(CATS))
    day2 = random_cases(["a"], SITES, _spec(random_per_site=2, day=2), len(CATS))
    assert len(day1) == 4 and day1 == again
    assert [c.pool_index for c in day1] == [c.pool_index for c in day2]
    assert {c.seed for c in day1}.isdisjoint({c.seed for c in day2})


# --- random directions ---------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_random_direction_is_seeded_8_bit_and_inside_the_ball(eps: float) -> None:
    clean = _pool()[0]
    q = random_direction(clean, eps, seed=11)
    assert q.dtype == torch.uint8 and q.shape == clean.shape
    l2 = float((q.double() / 255 - clean.double()).norm())
    assert l2 <= eps + 1e-9 and l2 > 0.8 * eps  # an interior image: most of the step survives the box
    assert torch.equal(q, random_direction(clean, eps, seed=11))
    assert not torch.equal(q, random_direction(clean, eps, seed=12))


# --- making a shard's twins ----------------------------------------------------------------------


def test_make_twins_makes_every_kind_inside_its_ball_reproducibly() -> None:
    enc, pool = _encoder(), _pool()
    spec = _spec(clean_per_site=1, targeted_epsilons=[1.0], targeted_per_site=1, random_per_site=1)
    synth = SynthesisConfig(restarts=2, budget=8, seed=0, deterministic=True, keep_float=False)

    def make():
        return make_twins(
            enc, SITES, pool, CATS, ["a", "c"], spec, synth, device="cpu", provenance={"source": "t"}
        )

    made = make()
    kinds = [t.kind for t in made.twins]
    assert kinds == ["perturbed"] * 8 + ["targeted"] * 2 + ["random"] * 4
    assert made.n_guided == 8 and made.n_implausible == 0
    for t in made.twins:
        l2 = np.linalg.norm(t.pixels.astype(np.float64) / 255 - pool[t.pool_index].double().numpy())
        assert t.pixels.dtype == np.uint8 and l2 <= t.epsilon + 1e-9
        assert abs(l2 - t.achieved_l2) < 1e-6
    up = [t for t in made.twins if t.direction == "up"]
    assert all(t.predicted_change > 0 for t in up) and up[0].provenance["source"] == "t"
    again = make()
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(made.twins, again.twins, strict=True))


def test_make_twins_flags_predictions_outside_the_observed_range() -> None:
    enc, pool = _encoder(), _pool()
    synth = SynthesisConfig(restarts=2, budget=8, seed=0, deterministic=True, keep_float=False)
    tight = (np.full(3, -1e-6), np.full(3, 1e-6))  # nothing the model predicts is plausible
    made = make_twins(
        enc, SITES, pool, CATS, ["a"], _spec(clean_per_site=1), synth, device="cpu", response_range=tight
    )
    assert made.n_implausible == made.n_guided == 4


# --- a model's own sensitivity -------------------------------------------------------------------


def test_align_sites_orders_and_pads() -> None:
    out = align_sites(np.array([[1.0, 2.0], [3.0, 4.0]]), ["b", "a"], ["a", "z", "b"])
    np.testing.assert_array_equal(out[[0, 2]], [[2.0, 4.0], [1.0, 3.0]])
    assert np.isnan(out[1]).all()


def test_model_own_sensitivity_attacks_each_site_up_and_down_per_epsilon() -> None:
    enc, x = _encoder(), _pool()
    cases, owner = sensitivity_cases(["a", "c"], SITES, len(x), 2, seed=0, eps=1.0)
    assert len(cases) == 8 and owner == ["a"] * 4 + ["c"] * 4
    out = model_own_sensitivity(
        enc, "m", SITES, x, ["c", "zz", "a"], [0.5, 1.0], seed=0, images_per_site=2, budget=8, device="cpu"
    )
    assert [p.epsilon for p in out] == [0.5, 1.0]
    for p in out:
        assert p.site_ids == ("c", "zz", "a") and p.pred_clean.shape == (3, 4)
        assert np.isnan(p.pred_clean[1]).all() and np.isfinite(p.pred_clean[[0, 2]]).all()
        change = p.pred_perturbed - p.pred_clean
        assert (change[[0, 2], 0::2] > 0).all() and (change[[0, 2], 1::2] < 0).all()  # up, down alternate
    assert (
        np.abs(out[1].pred_perturbed - out[1].pred_clean)[0].mean()
        > np.abs(out[0].pred_perturbed - out[0].pred_clean)[0].mean()
    )


# --- fitting and screening one candidate ---------------------------------------------------------


def _candidate_data(rng: np.random.Generator, n_clean: int = 24, n_sites: int = 3):
    W = rng.normal(size=(6, n_sites))
    X0 = rng.normal(size=(n_clean, 6))
    X = np.concatenate([X0, X0[:8] + rng.normal(scale=0.5, size=(8, 6))])  # 8 twins of the first 8
    mean = X @ W + 0.1 * rng.normal(size=(len(X), n_sites))
    groups = np.concatenate([np.arange(n_clean), np.arange(8)])
    trials = mean[:, :, None] + rng.normal(scale=0.1, size=(len(X), n_sites, 4))
    pairs = [(i, n_clean + i) for i in range(8)]
    return X, mean, groups, trials, pairs


def test_fit_candidate_screens_on_held_out_twins() -> None:
    X, mean, groups, trials, pairs = _candidate_data(np.random.default_rng(0))
    fit = fit_candidate(X, mean, groups, trials, pairs, ceiling_threshold=0.3)
    assert fit.pairs.shape == (8, 2) and fit.pred_change.shape == (8, 3)
    np.testing.assert_allclose(fit.obs_change, mean[24:] - mean[:8])
    assert fit.transfer is not None and (fit.transfer.r > 0.8).all()  # a linear truth transfers
    assert fit.report.score > 0.8 and fit.gate[0].all()
    held = np.zeros(len(X), bool)
    held[[26, 27]] = True
    assert fit_candidate(
        X, mean, groups, trials, pairs, ceiling_threshold=0.3, held_out=held
    ).pairs.tolist() == [
        [2, 26],
        [3, 27],
    ]
    none = fit_candidate(X[:24], mean[:24], groups[:24], trials[:24], [], ceiling_threshold=0.3)
    assert none.transfer is None and none.pairs.shape == (0, 2)


def test_fit_site_readout_fits_the_layout_the_candidate_asks_for() -> None:
    """One dispatch for the night and the offline benchmark: each layout gets its own readout,
    fitted exactly as that readout is on its own (same penalty rows, same predictions)."""
    X, mean, groups, trials, _ = _candidate_data(np.random.default_rng(3))
    select = one_per_group(groups)
    layouts = [
        ({}, MultiRidgeCV()),
        ({"factorized_positions": 2}, FactorizedRidgeCV(2)),
        ({"blend_positions": (1, 2)}, BlendedReadout(2, (1, 2))),
    ]
    for kwargs, alone in layouts:
        fitted = fit_site_readout(X, mean, select=select, **kwargs)
        assert type(fitted) is type(alone)
        np.testing.assert_allclose(fitted.predict(X), alone.fit(X, mean, select=select).predict(X))
    # fit_candidate fits the blend through the same dispatch, on one image per family.
    fit = fit_candidate(X, mean, groups, trials, [], ceiling_threshold=0.3, blend_positions=(1, 2))
    alone = BlendedReadout(2, (1, 2)).fit(X, mean, select=select)
    np.testing.assert_allclose(fit.readout.predict(X), alone.predict(X))
