"""The demo's yardstick metrics on hand-made twins, without a demo run.

The white-box twin of an exact family has found fraction 1, an unchanged image 0, a random
direction far less; the per-day report reads estimates and surrogates from the API (served here
by a small in-process stand-in for the two read-only endpoints it calls).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from demo.yardstick import History, _source_name, evaluate_yardstick, found_fractions
from models.simulator import make_brain, make_clean_images


@pytest.fixture(scope="module")
def brain() -> Any:
    return make_brain("natural", n_sites=4, seed=1)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_clean_images(6, seed=11)[0].astype(np.float64) / 255


def _optimal(brain: Any, x: np.ndarray, site: int, eps: float, direction: str = "up") -> np.ndarray:
    return np.clip(x + brain.optimal_perturbation(x[None], eps, site, direction)[0], 0.0, 1.0)


def _random(x: np.ndarray, eps: float, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal(x.shape)
    return np.clip(x + d * eps / np.linalg.norm(d), 0.0, 1.0)


def test_found_fraction_of_the_whitebox_twin_is_one_and_of_no_change_zero(
    brain: Any, clean: np.ndarray
) -> None:
    eps = 2.0
    parents = np.stack([clean[0], clean[1], clean[2], clean[3]])
    twins = np.stack(
        [
            _optimal(brain, clean[0], 0, eps, "up"),
            clean[1],  # nothing changed
            _random(clean[2], eps, 0),
            _optimal(brain, clean[3], 2, eps, "down"),
        ]
    )
    res = found_fractions(
        brain, parents, twins, np.array([0, 1, 2, 2]), np.full(4, eps), np.array([1, 1, 0, -1])
    )
    np.testing.assert_allclose(res["fraction"][0], 1.0, rtol=1e-9)
    assert res["fraction"][1] == 0.0 and res["change"][1] == 0.0
    assert 0.0 < res["fraction"][2] < 0.2  # a random direction of the same norm: the floor
    np.testing.assert_allclose(res["fraction"][3], 1.0, rtol=1e-9)  # the down optimum, for a down twin
    assert 0.3 < res["fraction_either"][3] <= 1.0  # ... and its share of max(up, down)
    np.testing.assert_allclose(res["fraction_either"][0], 1.0, rtol=1e-9)
    assert not res["beaten"].any()  # the exact optimum is never beaten (beyond rounding)
    np.testing.assert_allclose(res["whitebox"], res["attack"], rtol=1e-12)


def test_a_down_twin_is_judged_against_the_down_optimum_and_a_wrong_way_twin_finds_nothing(
    clean: np.ndarray,
) -> None:
    """On an energy brain a rate can rise far more than it can fall: a down twin is judged
    against the largest possible decrease, not against the largest increase."""
    v1 = make_brain("v1", n_sites=2, seed=0)
    eps = 2.0
    truth = v1.true_sensitivity_cases(clean[:1], np.array([0]), np.array([eps]))
    assert truth.down[0] < 0.5 * truth.up[0]  # the asymmetry this is about
    from models.synthesis import Case, SynthesisConfig, synthesize

    res = synthesize(
        v1.as_torch_module(torch.float32),
        torch.as_tensor(clean[:1], dtype=torch.float32),
        [Case(site=0, image=0, eps=eps, direction=-1)],
        SynthesisConfig(restarts=4, budget=48, keep_float=True),
    )
    assert res.adv is not None
    down_twin = res.adv.double().clamp(0.0, 1.0).numpy()
    res = found_fractions(v1, clean[:1], down_twin, np.array([0]), np.array([eps]), np.array([-1]))
    assert res["fraction"][0] > 0.9  # close to the white-box down value
    assert res["fraction_either"][0] < 0.5  # but a small share of the up one
    wrong_way = found_fractions(v1, clean[:1], down_twin, np.array([0]), np.array([eps]), np.array([1]))
    assert wrong_way["fraction"][0] == 0.0 and wrong_way["change"][0] == res["change"][0]


def test_a_twin_that_beats_the_attack_raises_the_reference(clean: np.ndarray) -> None:
    """On an attack-based family the reference is never below a twin the brain was shown."""
    v1 = make_brain("v1", n_sites=2, seed=0)

    class Weak:
        """The v1 brain with a white-box reference that found nothing."""

        def rates(self, images: np.ndarray) -> np.ndarray:
            return v1.rates(images)

        def true_sensitivity_cases(self, images, sites, eps):
            s = v1.true_sensitivity_cases(images, sites, eps)
            return type(s)(up=s.up * 0.0, down=s.down * 0.0)

    twin = _random(clean[0], 4.0, 1)
    res = found_fractions(Weak(), clean[:1], twin[None], np.array([1]), np.array([4.0]))
    assert res["beaten"][0] and res["fraction"][0] == pytest.approx(1.0)
    assert res["whitebox"][0] == res["change"][0] > 0


def _viewer(
    estimates: dict[tuple[str, float], float], to_date: dict[tuple[str, float], float] | None = None
) -> httpx.Client:
    """Serves GET /analysis/sensitivity (sources ``it`` and ``it_to_date``) and GET
    /model-versions/{v} as the server shapes them."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/analysis/sensitivity"):
            source = request.url.params.get("source")
            chosen = estimates if source == "it" else (to_date or {}) if source == "it_to_date" else {}
            items = [
                {"site_id": sid, "epsilon": e, "value": v, "source": source, "estimator": "sign_corrected"}
                for (sid, e), v in chosen.items()
            ]
            offset = int(request.url.params.get("offset", 0))
            return httpx.Response(200, json={"items": items[offset:], "total": len(items)})
        if path.endswith("/model-versions/mv-small"):
            metrics = [
                {"site_id": f"s{i}", "transfer_sign": 0.5 + 0.1 * i, "transfer_r": None} for i in range(4)
            ]
            return httpx.Response(
                200, json={"version": "mv-small", "candidate": "small_cnn", "site_metrics": metrics}
            )
        return httpx.Response(404, json={"detail": "not found"})

    return httpx.Client(base_url="http://lab/api/v1", transport=httpx.MockTransport(handler))


def test_day_report_per_epsilon_spearman_and_surrogates(brain: Any, clean: np.ndarray) -> None:
    eps = 1.0
    site_ids = [f"s{i}" for i in range(4)]
    pixels: dict[str, np.ndarray] = {f"c{k}": clean[k] for k in range(6)}
    lineage: dict[str, dict[str, Any]] = {f"c{k}": {"kind": "clean"} for k in range(6)}
    for i, sid in enumerate(site_ids):  # site i: the white-box twin on parent c<i>
        pixels[f"g{i}"] = _optimal(brain, clean[i], i, eps)
        pixels[f"r{i}"] = _random(clean[i], eps, i)
        for kind, sha in (("perturbed", f"g{i}"), ("random", f"r{i}")):
            lineage[sha] = {
                "kind": kind,
                "site_id": sid,
                "epsilon": eps,
                "parent_sha256": f"c{i}",
                "model_version": "mv-small",
                **({"direction": "up"} if kind == "perturbed" else {}),
            }
    sigma = brain.rates(clean).std(axis=0, ddof=1)
    truth = brain.true_sensitivity_cases(clean[:4], np.arange(4), eps).max / sigma
    estimates = {(sid, eps): float(truth[i]) for i, sid in enumerate(site_ids)}
    reversed_ranks = {k: -v for k, v in estimates.items()}
    with _viewer(estimates, to_date=reversed_ranks) as viewer:
        day = evaluate_yardstick(viewer, brain, lineage, pixels, site_ids, day=2)
    assert day["family"] == "natural" and day["whitebox"] == "exact" and day["natural_share"] == 1.0
    (row,) = day["by_epsilon"]
    assert row["found_median"] == pytest.approx(1.0) and row["n_found"] == 4 and row["n_random"] == 4
    assert row["random_mean"] < 0.2 and row["shipped_over_random"] > 5
    assert row["spearman"] == pytest.approx(1.0)  # estimates equal to the white-box values
    assert row["spearman_to_date"] == pytest.approx(-1.0)  # read from its own source
    assert day["spearman_to_date_mean"] == pytest.approx(-1.0)
    np.testing.assert_allclose(row["whitebox_per_site"], truth, rtol=1e-9)
    # White-box twins: their true change is the white-box value, so targeting costs nothing and
    # estimates equal to it are noise-free.
    np.testing.assert_allclose(row["true_effect_per_site"], truth, rtol=1e-9)
    assert row["spearman_true_effect"] == pytest.approx(1.0)
    assert row["spearman_estimate_vs_effect"] == pytest.approx(1.0)
    assert day["spearman_across_epsilons"] == pytest.approx(1.0)
    assert day["spearman_across_epsilons_to_date"] == pytest.approx(-1.0)
    assert [s["candidate"] for s in day["sites"]] == ["small_cnn"] * 4
    assert [s["transfer_sign"] for s in day["sites"]] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert list(day["by_source"]) == ["mv-small"] and day["by_source"]["mv-small"]["n"] == 4
    assert day["by_source"]["mv-small"]["median"] == pytest.approx(1.0)
    json.dumps(day)  # summary.json material: plain JSON


def _day_of_twins(brain: Any, clean: np.ndarray, parents: list[int], eps: float, weak_site: int | None):
    """Pixels and lineage of one day: site i's twin on parent ``parents[i]``.

    The twin of ``weak_site`` moves only a tenth of the way to the white-box optimum.
    """
    pixels: dict[str, np.ndarray] = {f"c{k}": clean[k] for k in range(len(clean))}
    lineage: dict[str, dict[str, Any]] = {f"c{k}": {"kind": "clean"} for k in range(len(clean))}
    for i, p in enumerate(parents):
        best = _optimal(brain, clean[p], i, eps)
        pixels[f"g{i}-{p}"] = clean[p] + 0.1 * (best - clean[p]) if i == weak_site else best
        lineage[f"g{i}-{p}"] = {
            "kind": "perturbed",
            "site_id": f"s{i}",
            "epsilon": eps,
            "parent_sha256": f"c{p}",
            "model_version": "mv-small",
        }
    return pixels, lineage


def test_targeting_ceiling_and_to_date_whitebox_over_every_parent(brain: Any, clean: np.ndarray) -> None:
    """A weak twin lowers the targeting ceiling; to date is judged at every parent used so far."""
    eps, site_ids = 1.0, [f"s{i}" for i in range(4)]
    sigma = brain.rates(clean).std(axis=0, ddof=1)
    history = History()
    days = [[0, 1, 2, 3], [4, 5, 0, 1]]
    wb = [brain.true_sensitivity_cases(clean[p], np.arange(4), eps).max / sigma for p in days]
    to_date = (wb[0] + wb[1]) / 2
    # Give the weak twin to the site whose white-box value is highest on day 2, so ranking
    # sites by its true change cannot be perfect.
    weak = int(np.argmax(wb[1]))
    for day, parents in enumerate(days):
        pixels, lineage = _day_of_twins(brain, clean, parents, eps, weak if day == 1 else None)
        estimates = {(sid, eps): float(wb[day][i]) for i, sid in enumerate(site_ids)}
        pooled = {(sid, eps): float(to_date[i]) for i, sid in enumerate(site_ids)}
        with _viewer(estimates, to_date=pooled) as viewer:
            out = evaluate_yardstick(viewer, brain, lineage, pixels, site_ids, day=day, history=history)
    (row,) = out["by_epsilon"]
    assert [len(history.whitebox[(sid, eps)]) for sid in site_ids] == [2, 2, 2, 2]
    assert row["spearman_to_date_true_effect"] < 1.0
    assert row["spearman_to_date"] == pytest.approx(1.0)  # the pooled estimate vs the pooled truth
    assert out["spearman_across_epsilons_to_date"] == pytest.approx(1.0)
    assert row["spearman"] == pytest.approx(1.0)
    assert row["spearman_true_effect"] < 1.0  # the weak twin put its site out of order
    assert row["true_effect_per_site"][weak] < 0.2 * row["whitebox_per_site"][weak]


def test_twins_are_grouped_by_source_across_nights() -> None:
    assert _source_name("night3-vone_energy") == _source_name("night1-vone_energy") == "vone_energy"
    assert _source_name("night12-search") == "search" and _source_name("night2-ensemble") == "ensemble"
    assert _source_name("mv-small") == "mv-small" and _source_name(None) == "unknown"
    assert _source_name("nightly-x") == "nightly-x"  # not a night's version name


def test_a_day_without_guided_twins_reports_nothing_to_judge(brain: Any, clean: np.ndarray) -> None:
    pixels = {f"c{k}": clean[k] for k in range(3)}
    lineage = {f"c{k}": {"kind": "clean"} for k in range(3)}
    with _viewer({}) as viewer:
        day = evaluate_yardstick(viewer, brain, lineage, pixels, ["s0"], day=0)
    assert day["by_epsilon"] == [] and day["sites"] == []


def test_demo_command_refuses_an_unknown_brain_family(tmp_path: Any) -> None:
    """``itloop demo --brain retina`` stops before anything is created, naming the known families."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["ITLOOP_DATA_DIR"] = str(tmp_path / "data")
    r = subprocess.run(
        [sys.executable, "-m", "itloop.cli", "demo", "--brain", "retina", "--days", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "retina" in r.stderr and "natural" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "itloop.db").exists()


def test_the_across_epsilon_figure_ranks_sites_by_the_radii_trials_resolve() -> None:
    """Estimates scrambled at a small epsilon but right at a large one: the pooled slope, weighted
    toward the large radius, ranks the sites as the white-box values do."""
    from demo.yardstick import _spearman_across_epsilons

    truth = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    rows = [
        {
            "epsilon": 0.5,
            "whitebox_per_site": list(0.5 * truth),
            "sign_corrected_per_site": [0.3, 0.1, 0.4, 0.0, 0.2],
        },
        {
            "epsilon": 2.0,
            "whitebox_per_site": list(2.0 * truth),
            "sign_corrected_per_site": list(1.0 * truth),
        },
    ]
    assert _spearman_across_epsilons(rows, "") == pytest.approx(1.0)
    assert _spearman_across_epsilons(rows[:1], "") < 0.5  # the small radius alone cannot rank them
