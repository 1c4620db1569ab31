"""The night planner (models/night_planner.py): budgets that fit the deadline, shards, throughput."""

import pytest

from models.night_planner import (
    DEFAULT_EVALS_PER_S,
    MIN_BUDGET,
    NightDoesNotFit,
    NightWork,
    budget_ladder,
    curve_evals,
    merge_throughput,
    night_evals,
    plan_synthesis,
)
from models.synthesis import curve_budgets

WORK = NightWork(
    n_sites=24, clean_per_site=3, n_epsilons=3, n_directions=2, n_targeted=0, restarts=8, budget=320
)


def test_evals_follow_the_engine_continuation() -> None:
    for b in (5, 32, 320):
        for k in (1, 3, 4):
            assert curve_evals(b, k) == sum(curve_budgets(b, k))
    assert night_evals(WORK, 32) == 24 * 3 * 2 * (32 + 2 * 8)


def test_no_deadline_keeps_the_budget_and_states_the_time() -> None:
    plan = plan_synthesis(WORK, 100.0, None)
    assert plan.budget == 320 and plan.fits and plan.throughput_source == "measured"
    assert plan.expected_s == pytest.approx(night_evals(WORK, 320) / 100.0)


def test_the_largest_budget_that_fits_is_chosen() -> None:
    full = night_evals(WORK, 320) / 100.0
    plan = plan_synthesis(WORK, 100.0, 0.3 * full)
    assert plan.budget < 320 and plan.expected_s <= 0.3 * full and plan.fits
    bigger = [b for b in budget_ladder(320) if b > plan.budget]
    assert all(night_evals(WORK, b) / 100.0 > 0.3 * full for b in bigger)
    two = plan_synthesis(WORK, 100.0, 0.3 * full, workers=2)  # two workers: twice the work in time
    assert two.budget >= plan.budget and two.sites_per_shard <= 12


def test_a_night_that_cannot_fit_says_by_how_much() -> None:
    smallest = night_evals(WORK, MIN_BUDGET) / DEFAULT_EVALS_PER_S
    with pytest.raises(NightDoesNotFit) as info:
        plan_synthesis(WORK, None, 0.5 * smallest)
    assert info.value.expected_s == pytest.approx(smallest)
    assert "remain" in str(info.value) and f"{smallest:.0f} s" in str(info.value)


def test_shards_hold_about_ten_minutes_of_work() -> None:
    slow = plan_synthesis(WORK, 1.0, None)  # one site takes 3 * 2 * 480 s: one site per shard
    assert slow.sites_per_shard == 1
    fast = plan_synthesis(WORK, 1e6, None)
    assert fast.sites_per_shard == 24


def test_throughput_cache_entries_average_the_newest_half() -> None:
    e = merge_throughput(None, 1000, 10.0)
    assert e == {"evals_per_s": 100.0, "shards": 1}
    e = merge_throughput(e, 1000, 5.0)
    assert e["evals_per_s"] == pytest.approx(150.0) and e["shards"] == 2
    assert budget_ladder(40) == [40, 20, 10, 5] and budget_ladder(3) == [3]
    with pytest.raises(ValueError):
        plan_synthesis(NightWork(1, 1, 1, 1, 0, 1, 0), 1.0, None)
