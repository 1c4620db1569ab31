"""The science benchmark's per-family figures and rows, from hand-made runs (no demo is run)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.bench_science import HELD_OUT, aggregate
from benchmarks.run_all import _science


def _run(family: str, seed: int, found: list[float], across: float, ok: bool = True) -> dict[str, Any]:
    days = [
        {
            "day": d,
            "found_median": f,
            "found_either_median": f / 2,
            "random_median": 0.01,
            "shipped_over_random": f / 0.01,
            "spearman": 0.2,
            "spearman_to_date": 0.3 + 0.1 * d,
            "spearman_true_effect": 0.9,
            "spearman_estimate_vs_effect": 0.3,
            "spearman_across_epsilons_to_date": across,
        }
        for d, f in enumerate(found, start=1)
    ]
    return {"family": family, "seed": seed, "ok": ok, "wall_s": 100.0 + seed, "days": days}


def test_aggregate_is_the_mean_over_seeds_of_each_runs_figures() -> None:
    runs = [
        _run("v1fine", 0, [0.1, 0.2, 0.3], across=0.6),
        _run("v1fine", 1, [0.2, 0.2, 0.5], across=0.8),
        _run("v1fine", 2, [9.0, 9.0, 9.0], across=0.0, ok=False),  # a failed run counts only as failed
        _run("natural", 0, [0.9, 0.9, 0.9], across=0.1),
    ]
    f = aggregate(runs, "v1fine", 1.0, days=4)
    assert f["runs"] == 2 and f["failed_runs"] == 1
    assert f["held_out"] is ("v1fine" in HELD_OUT) is False
    assert f["found_day_last"] == pytest.approx(0.4)
    assert f["found_rise"] == pytest.approx(0.25)
    assert f["found_either_day_last"] == pytest.approx(0.2)  # reported beside the goal figure
    assert f["spearman_to_date_day_last"] == pytest.approx(0.6)
    assert f["spearman_across_epsilons_to_date_day_last"] == pytest.approx(0.7)
    assert aggregate(runs, "natural", 1.0, days=4)["held_out"] is False
    assert (
        aggregate([_run("v1suppress", 0, [0.1, 0.2, 0.3], across=0.5)], "v1suppress", 1.0, days=4)["held_out"]
        is True
    )


def test_rows_name_held_out_families_and_judge_them_by_the_same_goals() -> None:
    runs = [_run("v1suppress", 0, [0.1, 0.1, 0.2], across=0.5)]
    result = {
        "day_last": 3,
        "goals": {"found": 0.5, "spearman": 0.8, "shipped_over_random": 10.0},
        "families": [aggregate(runs, "v1suppress", 1.0, days=4)],
    }
    rows = {r.figure: r for r in _science(result)}
    found = rows["v1suppress (1 seeds, share 1.00, held out): found fraction day 3"]
    assert found.passed is False  # 0.2 < 0.5: a held-out family gets no easier goal
    rise = rows["v1suppress (1 seeds, share 1.00, held out): found fraction rise day 1 to 3"]
    assert rise.passed is True
    across = rows[
        "v1suppress (1 seeds, share 1.00, held out): spearman to date, one slope per site over epsilons day 3"
    ]
    assert across.value == pytest.approx(0.5)
    either = rows[
        "v1suppress (1 seeds, share 1.00, held out): found fraction of the worst case, either direction day 3"
    ]
    assert either.value == pytest.approx(0.1) and either.passed is None  # report only
