"""RSVP schedule: balance, twin separation, determinism, bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from models.rsvp_schedule import ScheduleConfig, pair_separations, schedule_rsvp


def _batch(n_clean: int, twins_per_clean: int) -> tuple[list[str], list[tuple[str, str]]]:
    images, pairs = [], []
    for c in range(n_clean):
        images.append(f"c{c}")
        for t in range(twins_per_clean):
            images.append(f"c{c}p{t}")
            pairs.append((f"c{c}", f"c{c}p{t}"))
    images += [f"ref{r}" for r in range(10)]
    return images, pairs


def test_repeats_are_balanced_per_block() -> None:
    images, pairs = _batch(20, 4)
    sched = schedule_rsvp(images, pairs, ScheduleConfig(repeats=3, seed=1))
    counts = Counter(it.image for it in sched.items)
    assert set(counts.values()) == {3} and len(counts) == len(images)
    for block in range(3):
        shown = [it.image for it in sched.items if it.block == block]
        assert sorted(shown) == sorted(images)
    assert [it.seq for it in sched.items] == list(range(len(sched.items)))
    assert all(a.image != b.image for a, b in zip(sched.items, sched.items[1:], strict=False))


def test_long_day_meets_target_separation() -> None:
    # 2,000 unique images: a 200 ms slot gives 400 s per block; ask for 100 s apart.
    images, pairs = _batch(400, 4)
    images += [f"x{i}" for i in range(2000 - len(images))]
    cfg = ScheduleConfig(repeats=2, pair_separation_s=100.0, seed=3)
    sched = schedule_rsvp(images, pairs, cfg)
    assert not sched.capped
    assert sched.mean_pair_separation_s == pytest.approx(100.0, rel=0.15)
    assert sched.min_pair_separation_s > 40.0


def test_short_day_is_capped_and_says_so() -> None:
    images, pairs = _batch(10, 2)
    sched = schedule_rsvp(images, pairs, ScheduleConfig(repeats=2, pair_separation_s=1500.0, seed=0))
    assert sched.capped
    block_s = len(images) * 0.2
    # Capped at half a block, and the twins still land far apart on average.
    assert sched.mean_pair_separation_s > 0.3 * block_s


def test_random_order_would_do_worse() -> None:
    images, pairs = _batch(200, 4)
    cfg = ScheduleConfig(repeats=1, pair_separation_s=60.0, seed=5)
    sched = schedule_rsvp(images, pairs, cfg)
    rng = np.random.default_rng(0)
    shuffled = list(sched.items)
    perm = rng.permutation(len(shuffled))
    from dataclasses import replace

    shuffled = [replace(shuffled[p], seq=i) for i, p in enumerate(perm)]
    random_seps = pair_separations(shuffled, pairs, 0.2)
    # A random order puts some twins nearly back to back; the schedule does not.
    assert random_seps.min() < 5.0 < sched.min_pair_separation_s


def test_deterministic_by_seed_and_trials() -> None:
    images, pairs = _batch(15, 2)
    a = schedule_rsvp(images, pairs, ScheduleConfig(seed=9, images_per_trial=5))
    b = schedule_rsvp(images, pairs, ScheduleConfig(seed=9, images_per_trial=5))
    c = schedule_rsvp(images, pairs, ScheduleConfig(seed=10, images_per_trial=5))
    assert a.items == b.items and a.items != c.items
    assert [it.trial for it in a.items[:11]] == [0] * 5 + [1] * 5 + [2]


@pytest.mark.parametrize(
    "images,pairs,cfg",
    [
        (["a", "a"], [], ScheduleConfig()),
        (["a", "b"], [("a", "zzz")], ScheduleConfig()),
        (["a", "b"], [("a", "a")], ScheduleConfig()),
        (["a", "b"], [], ScheduleConfig(repeats=0)),
    ],
)
def test_bad_input(images: list[str], pairs: list[tuple[str, str]], cfg: ScheduleConfig) -> None:
    with pytest.raises(ValueError):
        schedule_rsvp(images, pairs, cfg)
