"""The demo report's numbers: nights numbered as the dashboard numbers them, and an error by day
split into parts that say why it rose."""

from __future__ import annotations

import math

import numpy as np
import pytest

from demo.report import error_budget, explain_error_changes, night_of


def test_nights_are_numbered_like_the_dashboard() -> None:
    assert night_of({"version": "night3-resnet50", "trained_on": {"night": 3}}) == 3
    assert night_of({"version": "night12-pixels16", "trained_on": {}}) == 12  # from the name
    assert night_of({"version": "mv-robust", "trained_on": {}}) is None


def _truth(est: list[list[float]], eff: list[list[float]]) -> dict[str, object]:
    return {"epsilons": [1.0, 2.0], "estimates": {"sign_corrected": est}, "true_effect": eff}


def _records(site_ids: list[str], width: float, pairs: int) -> list[dict[str, object]]:
    return [
        {"source": "it", "site_id": s, "epsilon": e, "ci_low": 0.0, "ci_high": width, "n_pairs": pairs}
        for s in site_ids
        for e in (1.0, 2.0)
    ]


def test_error_budget_parts() -> None:
    sites = ["a", "b"]
    b = error_budget(
        _truth([[0.1, 0.3], [0.2, 0.2]], [[0.2, 0.4], [0.2, 0.4]]), sites, _records(sites, 0.392, 6)
    )
    assert b["cells"] == 4
    assert b["mae"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.2) / 4)
    assert b["bias"] == pytest.approx(-b["mae"])  # every estimate at or below the truth
    assert b["noise_mae"] == pytest.approx(math.sqrt(2 / math.pi) * 0.1)  # se = 0.392 / 3.92
    assert b["mean_true"] == pytest.approx(0.3)
    assert b["rel_error"] == pytest.approx(b["mae"] / 0.3)
    assert b["pairs_per_cell"] == 6
    # A site or epsilon the truth lacks (NaN) is left out, not counted as an error.
    nan = float("nan")
    assert error_budget(_truth([[0.1, nan], [nan, nan]], [[0.2, 0.4], [0.2, 0.4]]), sites, [])["cells"] == 1


def test_a_rise_from_larger_effects_is_explained_as_such() -> None:
    sites = ["a", "b"]
    day1 = error_budget(
        _truth([[0.1, 0.2], [0.1, 0.2]], [[0.12, 0.24], [0.12, 0.24]]), sites, _records(sites, 0.2, 6)
    )
    day2 = error_budget(
        _truth([[0.5, 1.0], [0.5, 1.0]], [[0.55, 1.1], [0.55, 1.1]]), sites, _records(sites, 0.2, 6)
    )
    why = explain_error_changes([day1 | {"day": 1}, day2 | {"day": 2}])
    assert len(why) == 1 and why[0].startswith("Day 1 to day 2: error 0.030 -> 0.075")
    assert "moved sites more" in why[0] and "relative to the effect the error fell" in why[0]
    assert "trial noise alone" not in why[0]  # the intervals did not widen
    # A day whose error fell needs no explanation.
    assert explain_error_changes([day2 | {"day": 1}, day1 | {"day": 2}]) == []
    assert np.isfinite(day1["rel_error"]) and day2["rel_error"] < day1["rel_error"]


def test_a_noise_limited_rise_is_called_noise() -> None:
    sites = ["a", "b"]
    # Same effects, same (wide) intervals; the estimates scatter a little more on day 2.
    eff = [[0.2, 0.4], [0.2, 0.4]]
    day1 = error_budget(_truth([[0.1, 0.5], [0.3, 0.3]], eff), sites, _records(sites, 0.8, 4))
    day2 = error_budget(_truth([[0.05, 0.55], [0.35, 0.25]], eff), sites, _records(sites, 0.8, 4))
    (why,) = explain_error_changes([day1 | {"day": 1}, day2 | {"day": 2}])
    assert "within noise" in why and "moved sites more" not in why, why
