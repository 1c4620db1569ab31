"""Sensitivity estimators on simulated sites with known rates and Poisson trial noise."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from models.sensitivity import (
    POOLED,
    CleanResponses,
    DayInputs,
    ModelPredictions,
    PairedResponses,
    SensitivityEstimate,
    analyze_day,
    analyze_days,
    compare_curves,
    pair_sensitivity,
    random_pair_baseline,
    site_sigma,
)

# ---------------------------------------------------------------- simulator


@dataclass
class Sim:
    pairs: PairedResponses
    clean: CleanResponses
    rates: np.ndarray  # (n_sites, n_clean) true clean rates
    change: np.ndarray  # (n_sites, n_pairs) true r(x) - r(x + delta)
    n_clean_rep: np.ndarray  # (n_sites, n_pairs) repeats of the pair's clean image
    n_pert_rep: np.ndarray  # (n_sites, n_pairs)
    pert_rates: np.ndarray  # (n_sites, n_pairs)

    def truth(self, sigma: str = "none") -> float:
        """Population mean over sites of mean_j |true change| (over the true-rate sd if normalised)."""
        per_site = np.abs(self.change).mean(axis=1)
        if sigma != "none":
            per_site = per_site / self.rates.std(axis=1, ddof=1)
        return float(per_site.mean())

    def predicted_plain(self) -> float:
        """Expected plain estimate (raw units): folded-normal mean per pair, Gaussian approx. of Poisson."""
        mu_c = self.rates[:, : self.change.shape[1]]
        s = np.sqrt(mu_c / self.n_clean_rep + self.pert_rates / self.n_pert_rep)
        m = np.abs(self.change)
        z = m / s
        erf = np.vectorize(math.erf)
        folded = s * np.sqrt(2 / np.pi) * np.exp(-(z**2) / 2) + m * erf(z / np.sqrt(2))
        return float(folded.mean(axis=1).mean())


def _trials(rng: np.random.Generator, rates: np.ndarray, n_rep: np.ndarray, max_rep: int) -> np.ndarray:
    counts = rng.poisson(rates[..., None], rates.shape + (max_rep,)).astype(float)
    counts[np.arange(max_rep) >= n_rep[..., None]] = np.nan
    return counts


def simulate(
    rng: np.random.Generator,
    *,
    n_sites: int = 20,
    n_pairs: int = 40,
    n_clean: int = 50,
    reps: tuple[int, int] = (6, 12),
    pert_reps: tuple[int, int] | None = None,
    change_sd: float = 0.4,
    wrong_sign: float = 0.0,
    random_direction: bool = False,
    epsilon: float = 1.0,
) -> Sim:
    """Sites with image-dependent Poisson rates; each pair changes the rate by a known amount.

    ``change_sd`` sets the size of a site's changes in units of its rate spread;
    ``wrong_sign`` is the fraction of pairs whose direction the model gets wrong.
    """
    mean = rng.uniform(5, 15, n_sites)[:, None]
    spread = 0.3 * mean
    rates = np.clip(mean + spread * rng.standard_normal((n_sites, n_clean)), 0.5, None)
    size = (
        change_sd * spread * rng.uniform(0.5, 1.5, (n_sites, 1)) * rng.uniform(0.5, 1.5, (n_sites, n_pairs))
    )
    direction = rng.choice([-1.0, 1.0], (n_sites, n_pairs))
    pair_rates = rates[:, :n_pairs]
    pert_rates = np.clip(pair_rates - direction * size, 0.1, None)
    change = pair_rates - pert_rates
    n_rep = rng.integers(reps[0], reps[1] + 1, (n_sites, n_clean))
    pr = pert_reps or reps
    n_pert = rng.integers(pr[0], pr[1] + 1, (n_sites, n_pairs))
    clean_trials = _trials(rng, rates, n_rep, reps[1])
    pert_trials = _trials(rng, pert_rates, n_pert, pr[1])
    flip = np.where(rng.random((n_sites, n_pairs)) < wrong_sign, -1.0, 1.0)
    f_clean = pair_rates + rng.normal(0, 0.1, (n_sites, n_pairs))
    f_pert = f_clean - flip * direction * (size + 0.1)  # the model always predicts some change
    ids = tuple(f"site{i}" for i in range(n_sites))
    pairs = PairedResponses(
        epsilon,
        ids,
        clean_trials[:, :n_pairs],
        pert_trials,
        f_clean,
        f_pert,
        np.full((n_sites, n_pairs), random_direction),
    )
    return Sim(
        pairs, CleanResponses(ids, clean_trials), rates, change, n_rep[:, :n_pairs], n_pert, pert_rates
    )


def population(records: list[SensitivityEstimate], estimator: str | None = None) -> SensitivityEstimate:
    rows = [r for r in records if r.site_id is None and (estimator is None or r.estimator == estimator)]
    assert len(rows) == 1, rows
    return rows[0]


def site_row(records: list[SensitivityEstimate], site_id: str) -> SensitivityEstimate:
    rows = [r for r in records if r.site_id == site_id]
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------- bias and coverage


def test_sign_corrected_is_unbiased_and_plain_is_biased_by_the_predicted_amount() -> None:
    n_seeds = 50
    covered_sign = excluded_plain = 0
    sign, plain, truth, predicted = [], [], [], []
    sign_norm, sign_norm_plain_sigma, truth_norm = [], [], []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        sim = simulate(rng)
        opts = {"n_boot": 400, "rng": rng, "site_intervals": False}
        s = population(
            pair_sensitivity(sim.pairs, sim.clean, estimator="sign_corrected", sigma="none", **opts)
        )
        p = population(pair_sensitivity(sim.pairs, sim.clean, estimator="plain", sigma="none", **opts))
        t = sim.truth("none")
        covered_sign += s.ci_low <= t <= s.ci_high
        excluded_plain += not (p.ci_low <= t <= p.ci_high)
        sign.append(s.value)
        plain.append(p.value)
        truth.append(t)
        predicted.append(sim.predicted_plain())
        for sigma, out in (("noise_corrected", sign_norm), ("plain", sign_norm_plain_sigma)):
            point_only = {**opts, "n_boot": 10}  # only the point estimate is checked here
            r = pair_sensitivity(sim.pairs, sim.clean, estimator="sign_corrected", sigma=sigma, **point_only)
            out.append(population(r).value)
        truth_norm.append(sim.truth("true_sd"))

    assert covered_sign >= 0.9 * n_seeds
    assert excluded_plain >= 0.9 * n_seeds
    mean_truth = np.mean(truth)
    # Unbiased: the mean error over 50 seeds is a fraction of a percent (noise alone).
    assert abs(np.mean(sign) - mean_truth) < 0.02 * mean_truth
    # Plain: biased upward by ~30% here, by the folded-normal amount that Poisson noise predicts.
    assert np.mean(plain) - mean_truth > 0.2 * mean_truth
    assert abs(np.mean(plain) - np.mean(predicted)) < 0.02 * np.mean(predicted)
    # Normalised by the noise-corrected sigma it stays (nearly) unbiased; the paper's
    # plain sigma is inflated by trial noise and deflates the figure.
    assert abs(np.mean(sign_norm) - np.mean(truth_norm)) < 0.03 * np.mean(truth_norm)
    assert np.mean(sign_norm_plain_sigma) < 0.97 * np.mean(truth_norm)


def test_sign_convention_positive_when_model_predicts_the_direction() -> None:
    rng = np.random.default_rng(7)
    values = {}
    for wrong in (0.0, 0.5, 1.0):
        sim = simulate(rng, wrong_sign=wrong)
        r = pair_sensitivity(
            sim.pairs, sim.clean, estimator="sign_corrected", sigma="none", n_boot=200, rng=rng
        )
        values[wrong] = (population(r), sim.truth("none"))
    right, truth = values[0.0]
    assert right.value > 0.8 * truth
    half, _ = values[0.5]
    assert half.ci_low < 0 < half.ci_high  # a coin-flip model: no net signal, a lower bound of ~0
    wrong, truth = values[1.0]
    assert wrong.value < -0.8 * truth


# ---------------------------------------------------------------- noise floor


def test_noise_floor_matches_plain_estimate_when_delta_is_zero() -> None:
    rng = np.random.default_rng(11)
    # Perturbed images get fewer repeats than clean ones, so the floor must be
    # rescaled from the clean images' split halves to the pairs' repeat counts.
    sim = simulate(rng, n_sites=30, n_pairs=60, n_clean=60, reps=(8, 12), pert_reps=(3, 5), change_sd=0.0)
    assert np.all(sim.change == 0)
    est = {
        k: population(pair_sensitivity(sim.pairs, sim.clean, estimator=k, n_boot=300, rng=rng))
        for k in ("plain", "noise_floor", "sign_corrected", "plain_noise_corrected")
    }
    plain, floor = est["plain"].value, est["noise_floor"].value
    assert plain > 0.1  # the plain estimator reads noise as sensitivity
    assert abs(floor - plain) < 0.06 * plain
    assert est["noise_floor"].ci_low <= plain <= est["noise_floor"].ci_high
    for k in ("sign_corrected", "plain_noise_corrected"):
        assert est[k].ci_low < 0 < est[k].ci_high, k
        assert abs(est[k].value) < 0.25 * plain, k


def test_noise_corrected_plain_recovers_the_rms_change() -> None:
    corrected, plain, rms, covered = [], [], [], 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        sim = simulate(rng, n_sites=30, n_pairs=60, n_clean=60)
        opts = {"sigma": "none", "n_boot": 300, "rng": rng, "site_intervals": False}
        r = population(pair_sensitivity(sim.pairs, sim.clean, estimator="plain_noise_corrected", **opts))
        p = population(pair_sensitivity(sim.pairs, sim.clean, estimator="plain", **opts))
        rms.append(float(np.sqrt((sim.change**2).mean(axis=1)).mean()))
        covered += r.ci_low <= rms[-1] <= r.ci_high
        corrected.append(r.value)
        plain.append(p.value)
    assert covered >= 9
    # Unbiased mean square; its root per site is a few percent low (Jensen).
    assert abs(np.mean(corrected) / np.mean(rms) - 1) < 0.1
    assert np.mean(plain) > 1.2 * np.mean(rms)  # the uncorrected figure is much further off


# ---------------------------------------------------------------- random-pair baseline


def test_random_pair_baseline_matches_closed_form() -> None:
    rng = np.random.default_rng(3)
    trials = rng.normal(10.0, 2.0, (3, 3000, 1))  # Gaussian image means, one repeat
    rows = random_pair_baseline(CleanResponses(("a", "b", "c"), trials), n_boot=200, rng=rng)
    expected = 2 / np.sqrt(np.pi)  # E|X - Y| / sd for Gaussian X, Y
    pop = population(rows)
    assert abs(pop.value - expected) < 0.015
    assert pop.ci_low <= expected <= pop.ci_high
    assert pop.n_sites == 3 and pop.epsilon is None


def test_random_pair_baseline_is_exact_on_a_small_case() -> None:
    trials = np.array([[[0.0], [1.0], [3.0]]])  # |diffs| 1, 3, 2 -> mean 2
    rows = random_pair_baseline(CleanResponses(("a",), trials), n_boot=50, rng=0)
    sd = np.std([0.0, 1.0, 3.0], ddof=1)
    assert site_row(rows, "a").value == pytest.approx(2.0 / sd)


# ---------------------------------------------------------------- intervals


def test_intervals_shrink_as_data_grow() -> None:
    widths = {}
    for size, (n_sites, n_pairs) in {"small": (6, 8), "large": (30, 64)}.items():
        rng = np.random.default_rng(21)
        sim = simulate(rng, n_sites=n_sites, n_pairs=n_pairs, n_clean=max(n_pairs, 20))
        rows = pair_sensitivity(sim.pairs, sim.clean, estimator="sign_corrected", n_boot=400, rng=rng)
        pop = population(rows)
        site = np.median([r.ci_high - r.ci_low for r in rows if r.site_id is not None])
        widths[size] = (pop.ci_high - pop.ci_low, site)
        assert pop.ci_low < pop.value < pop.ci_high
    assert widths["large"][0] < 0.6 * widths["small"][0]
    assert widths["large"][1] < 0.6 * widths["small"][1]


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    sim = simulate(np.random.default_rng(2), n_sites=5, n_pairs=10)
    a = pair_sensitivity(sim.pairs, sim.clean, n_boot=100, rng=42)
    b = pair_sensitivity(sim.pairs, sim.clean, n_boot=100, rng=np.random.default_rng(42))
    assert [r.to_record() for r in a] == [r.to_record() for r in b]


# ---------------------------------------------------------------- undefined sites


def test_constant_or_sparse_site_is_undefined_with_a_reason_and_no_warning() -> None:
    rng = np.random.default_rng(8)
    sim = simulate(rng, n_sites=6, n_pairs=10)
    clean_trials = sim.clean.trials.copy()
    clean_trials[0] = np.where(np.isfinite(clean_trials[0]), 4.0, np.nan)  # site0: constant response
    pair_clean = sim.pairs.clean.copy()
    pair_clean[1, 1:] = np.nan  # site1: a single pair
    pairs = PairedResponses(
        1.0,
        sim.pairs.site_ids,
        pair_clean,
        sim.pairs.perturbed,
        sim.pairs.pred_clean,
        sim.pairs.pred_perturbed,
    )
    clean = CleanResponses(sim.clean.site_ids, clean_trials)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigma, reasons = site_sigma(clean)
        rows = {
            k: pair_sensitivity(pairs, clean, estimator=k, sigma=s, n_boot=50, rng=rng)
            for k in ("plain", "sign_corrected", "noise_floor", "plain_noise_corrected")
            for s in ("plain", "noise_corrected")
        }
        baseline = random_pair_baseline(clean, n_boot=50, rng=rng)
    assert np.isnan(sigma[0]) and "sigma_i = 0" in reasons[0] and reasons[1] is None
    for k, r in [*rows.items(), ("random_pair", baseline)]:
        s0 = site_row(r, "site0")
        assert np.isnan(s0.value) and np.isnan(s0.ci_low) and "constant response" in s0.undefined_reason, k
        assert s0.n_sites == 0
        pop = population(r)
        assert np.isfinite(pop.value) and pop.undefined_reason is None
    for k, r in rows.items():
        s1 = site_row(r, "site1")
        assert np.isnan(s1.value) and s1.undefined_reason.startswith("too few pairs"), k
        assert population(r).n_sites == 4
    assert site_row(baseline, "site1").undefined_reason is None  # it has clean images
    rec = site_row(rows["plain"], "site0").to_record()
    assert rec["value"] is None and rec["undefined_reason"]


# ---------------------------------------------------------------- curves


def test_compare_curves_picks_the_closest_model_and_the_standard_ratio() -> None:
    eps = np.array([1.0, 2.0, 4.0, 8.0])
    it = 0.1 * eps**0.8
    rng = np.random.default_rng(0)
    wobble = np.exp(rng.normal(0, 0.05, eps.shape))
    models = {
        "standard": 10 * it * wobble,
        "robust": 1.3 * it * wobble[::-1],
        "shallow": it**0.5,  # crosses IT's curve: close at one epsilon, far overall
        "flat": np.full(eps.shape, np.nan),
    }
    out = compare_curves(it, models, standard="standard")
    assert out.closest == "robust"
    assert out.ratio_to_standard == pytest.approx(0.1, rel=0.05)
    assert out.ratios["robust"] == pytest.approx(1 / 1.3, rel=0.05)
    assert np.isnan(out.distances["flat"]) and out.n_eps["flat"] == 0
    # Log-space symmetry: twice and half as sensitive are equally far.
    sym = compare_curves(it, {"twice": 2 * it, "half": it / 2})
    assert sym.distances["twice"] == pytest.approx(sym.distances["half"])
    assert np.isnan(sym.ratio_to_standard)
    with pytest.raises(ValueError):
        compare_curves(it, {"short": it[:2]})


# ---------------------------------------------------------------- data structures


def test_from_all_sites_keeps_each_sites_own_pairs() -> None:
    n_sites, n_all, reps = 3, 5, 2
    # response of site i to pair k, repeat r = 100 i + 10 k + r (easy to trace)
    i, k, r = np.meshgrid(np.arange(n_sites), np.arange(n_all), np.arange(reps), indexing="ij")
    clean = 100.0 * i + 10.0 * k + r
    owner = np.array([0, 1, 0, -1, 2])  # pair 3 is shared (e.g. a random direction)
    pairs = PairedResponses.from_all_sites(
        epsilon=2.0,
        site_ids=["a", "b", "c"],
        clean=clean,
        perturbed=clean + 1.0,
        pred_clean=clean[..., 0],
        pred_perturbed=clean[..., 0] - 1.0,
        pair_site=owner,
        random_direction=[False, False, False, True, False],
    )
    assert pairs.clean.shape == (3, 3, 2)  # site a has pairs 0, 2, 3
    np.testing.assert_array_equal(pairs.clean[0, :, 0], [0.0, 20.0, 30.0])
    np.testing.assert_array_equal(pairs.clean[1, :2, 0], [110.0, 130.0])
    assert np.isnan(pairs.clean[1, 2]).all() and np.isnan(pairs.pred_clean[2, 2])
    np.testing.assert_array_equal(pairs.random_direction[0], [False, False, True])
    with pytest.raises(ValueError):
        PairedResponses.from_all_sites(
            epsilon=2.0,
            site_ids=["a", "b", "c"],
            clean=clean,
            perturbed=clean,
            pred_clean=clean[..., 0],
            pred_perturbed=clean[..., 0],
            pair_site=[0, 1, 5, 0, 0],
        )


def _models_for(sim: Sim, epsilon: float, scale: dict[str, float]) -> list[ModelPredictions]:
    """Noise-free models that see the true rates and change them ``scale`` times as much as IT."""
    n_pairs = sim.change.shape[1]
    f_clean = sim.rates[:, :n_pairs]
    return [
        ModelPredictions(name, epsilon, sim.clean.site_ids, sim.rates, f_clean, f_clean - k * sim.change)
        for name, k in scale.items()
    ]


def _day(seed: int, site_order: slice = slice(None), n_sites: int = 12) -> DayInputs:
    rng = np.random.default_rng(seed)
    pairs, models, clean = [], [], None
    for eps in (1.0, 3.0, 10.0):
        sim = simulate(rng, n_sites=n_sites, n_pairs=12, n_clean=30, change_sd=0.15 * eps, epsilon=eps)
        sim_random = simulate(
            rng,
            n_sites=n_sites,
            n_pairs=6,
            n_clean=30,
            change_sd=0.02 * eps,
            random_direction=True,
            epsilon=eps,
        )
        # one clean set per day: reuse the first simulation's (the others' rates differ, fine for this test)
        clean = clean or sim.clean
        pairs += [sim.pairs, sim_random.pairs]
        models += _models_for(sim, eps, {"standard": 10.0, "robust": 1.0, "tiny": 0.05})
    assert clean is not None
    reorder = np.arange(n_sites)[site_order]
    ids = tuple(np.array(clean.site_ids)[reorder])
    return DayInputs(CleanResponses(ids, clean.trials[reorder]), pairs, models)


def test_analyze_day_produces_every_figure_as_storable_records() -> None:
    day = _day(0)
    result = analyze_day(
        day.clean, day.pairs, day.models, day="2024-05-01", n_boot=100, rng=1, standard_model="standard"
    )
    rows = result.to_records()
    json.dumps(rows, allow_nan=False)  # storable as is
    assert result.epsilons == (1.0, 3.0, 10.0)
    kinds = {r["estimator"] for r in rows}
    assert kinds == {
        "plain",
        "sign_corrected",
        "plain_noise_corrected",
        "noise_floor",
        "random_pair",
        "model_free_plain",
        "model_free_sign_corrected",
        "model",
    }
    assert all(r["day"] == "2024-05-01" for r in rows)
    # one row per site and one population row, per estimator and epsilon
    n_sites = day.clean.n_sites
    per_eps = [r for r in rows if r["estimator"] == "sign_corrected" and r["epsilon"] == 3.0]
    assert len(per_eps) == n_sites + 1
    assert len([r for r in rows if r["estimator"] == "model"]) == 3 * 3 * (n_sites + 1)
    assert len([r for r in rows if r["estimator"] == "random_pair"]) == n_sites + 1
    pop = result.population("sign_corrected")
    assert [p.epsilon for p in pop] == [1.0, 3.0, 10.0]
    assert pop[0].value < pop[-1].value  # sensitivity grows with epsilon
    guided, free = result.curve("sign_corrected"), result.curve("model_free_sign_corrected")
    assert np.all(free < guided)  # random directions underestimate
    cmp = result.comparisons["sign_corrected"]
    assert cmp.closest == "robust"
    assert 0.03 < cmp.ratio_to_standard < 0.3  # IT about ten-fold less sensitive than the standard net
    pair_rows = [r for r in rows if r["estimator"] == "plain" and r["site_id"] is not None]
    assert all(r["n_pairs"] == 12 for r in pair_rows)  # random-direction pairs kept apart


def test_analyze_days_pools_sites_by_id() -> None:
    days = {"d1": _day(1), "d2": _day(2, site_order=slice(None, None, -1))}
    out = analyze_days(days, n_boot=150, rng=3, cumulative=True)
    assert set(out.per_day) == {"d1", "d2"} and out.pooled.day == POOLED
    rows = out.to_records()
    assert {r["day"] for r in rows} == {"d1", "d2", POOLED}

    def pop(a: object, eps: float = 3.0) -> SensitivityEstimate:
        return next(p for p in a.population("sign_corrected") if p.epsilon == eps)  # type: ignore[attr-defined]

    pooled, d1, d2 = pop(out.pooled), pop(out.per_day["d1"]), pop(out.per_day["d2"])
    assert pooled.n_pairs == d1.n_pairs + d2.n_pairs and pooled.n_sites == d1.n_sites
    assert pooled.ci_high - pooled.ci_low < min(d1.ci_high - d1.ci_low, d2.ci_high - d2.ci_low)
    site = [
        e
        for e in out.pooled.estimates
        if e.estimator == "plain" and e.epsilon == 1.0 and e.site_id == "site0"
    ]
    assert site[0].n_pairs == 24  # twelve pairs a day, matched across days despite the reordering
    assert pop(out.cumulative["d2"]).n_pairs == pooled.n_pairs
    assert pop(out.cumulative["d1"]).n_pairs == d1.n_pairs
