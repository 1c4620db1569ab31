"""Adaptive allocation: trials shift toward wide confidence intervals, the day keeps its length."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from models.allocation import allocate_repeats, plan_twin_repeats
from models.rsvp_schedule import ScheduleConfig, pair_separations, schedule_rsvp


def test_repeats_follow_the_weights_within_bounds_and_keep_the_total() -> None:
    w = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 0.1])
    reps = allocate_repeats(w, base=4, min_repeats=2, max_repeats=8)
    assert reps.sum() == 4 * len(w)
    assert reps.min() >= 2 and reps.max() <= 8
    # monotone in the weight: a wider interval never gets fewer repeats
    order = np.argsort(w, kind="stable")
    assert np.all(np.diff(reps[order]) >= 0)
    assert reps[4] == 8 and reps[5] == 2


def test_equal_or_unknown_weights_give_the_even_allocation() -> None:
    assert allocate_repeats(np.ones(5), base=3, min_repeats=2, max_repeats=6).tolist() == [3] * 5
    w = np.array([np.nan, np.nan, np.nan])
    assert allocate_repeats(w, base=4, min_repeats=2, max_repeats=8).tolist() == [4, 4, 4]


def test_impossible_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_repeats"):
        allocate_repeats(np.ones(3), base=2, min_repeats=3, max_repeats=4)


def test_twin_plan_shifts_trials_toward_the_widest_site_and_says_why() -> None:
    twins = [
        (f"t{k}", site, eps) for k, (site, eps) in enumerate([("a", 1.0), ("a", 1.0), ("b", 1.0), ("b", 2.0)])
    ]
    widths = {("a", 1.0): 0.1, ("b", 1.0): 0.8, ("b", 2.0): 0.4}
    plan = plan_twin_repeats(twins, widths, base=4)
    assert sum(plan.repeats.values()) == 16
    assert plan.repeats["t2"] > plan.repeats["t3"] > plan.repeats["t0"]
    assert "widest site b at eps 1" in plan.reason


def test_no_widths_yet_keeps_the_even_schedule() -> None:
    twins = [("t0", "a", 1.0), ("t1", "b", 1.0)]
    plan = plan_twin_repeats(twins, {}, base=4)
    assert plan.repeats == {"t0": 4, "t1": 4}
    assert "no confidence intervals yet" in plan.reason


def test_schedule_shows_each_image_as_often_as_allocated_and_keeps_the_day_length() -> None:
    clean = [f"c{k}" for k in range(6)]
    twins = [f"p{k}" for k in range(6)]
    pairs = list(zip(clean, twins, strict=True))
    repeats_of = {"p0": 8, "p1": 6, "p2": 2, "p3": 2, "p4": 3, "p5": 3}  # 24, as 6 x 4
    cfg = ScheduleConfig(repeats=4, pair_separation_s=2.0, seed=5)
    even = schedule_rsvp(clean + twins, pairs, cfg)
    sched = schedule_rsvp(clean + twins, pairs, cfg, repeats_of=repeats_of)
    shown = Counter(it.image for it in sched.items)
    assert all(shown[c] == 4 for c in clean)
    assert all(shown[t] == r for t, r in repeats_of.items())
    assert len(sched.items) == len(even.items)
    # blocks stay balanced: an image never appears twice in one block
    per_block = Counter((it.block, it.image) for it in sched.items)
    assert max(per_block.values()) == 1
    assert len(pair_separations(sched.items, pairs, 0.2)) > 0
