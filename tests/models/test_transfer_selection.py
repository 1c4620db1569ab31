"""Measured transfer, per-site choice of surrogate, the across-day search and the V1-like front end."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from models.ensemble import EnsembleEncoder
from models.search import PairDifferenceRidge
from models.selection import SourceEvidence, choose_per_site
from models.transfer import implausible_predictions, site_transfer
from models.vone import VOneFrontEnd, gabor_bank


def test_site_transfer_separates_a_transferring_surrogate_from_noise() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 3))
    good = truth + 0.3 * rng.normal(size=truth.shape)
    t_good = site_transfer(good, truth)
    assert np.all(t_good.r > 0.9) and np.all(t_good.r_low > 0.85)
    assert np.all(t_good.sign_agreement > 0.8) and np.all(t_good.sign_low > 0.5)
    # A surrogate that does not transfer: the 95% CIs cover chance about 95% of the time.
    noise = rng.normal(size=(100, 400))
    t_noise = site_transfer(noise, rng.normal(size=noise.shape))
    assert 0.92 <= np.mean((t_noise.r_low < 0) & (t_noise.r_high > 0)) <= 0.98
    assert 0.92 <= np.mean((t_noise.sign_low < 0.5) & (t_noise.sign_high > 0.5)) <= 0.99
    # Slope: observed per predicted, 0.5 when the surrogate promises twice what happens.
    assert site_transfer(2 * truth, truth).slope == pytest.approx(np.full(3, 0.5))


def test_site_transfer_ignores_unrecorded_pairs_and_needs_four() -> None:
    pred = np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 3.0], [4.0, np.nan], [5.0, 5.0]])
    obs = pred.copy()
    t = site_transfer(pred, obs)
    assert list(t.n) == [5, 3]
    assert t.r[0] == pytest.approx(1.0) and np.isnan(t.r[1])


def _evidence(
    name: str, r: list[float], n: int, pred: list[float], own: list[float] | None = None, own_se: float = 0.1
) -> SourceEvidence:
    k = len(r)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same draws in every process
    truth = rng.normal(size=(max(n, 1), k))
    p = np.array(r) * truth + np.sqrt(1 - np.array(r) ** 2) * rng.normal(size=truth.shape)
    tr = site_transfer(p[:n], truth[:n])
    if own is None:
        return SourceEvidence(name=name, transfer=tr, predictivity=np.array(pred))
    return SourceEvidence(
        name=name,
        transfer=tr,
        predictivity=np.array(pred),
        effect=np.array(own),
        effect_se=np.full(k, own_se),
        n_own=np.where(np.isfinite(own), 18, 0),
    )


def test_choice_is_predictivity_before_twins_then_own_twins_then_exploration() -> None:
    # "predictive" predicts clean images best; "transfers" makes twins that move the sites.
    before = [
        _evidence("predictive", [0.0, 0.0], 0, [0.9, 0.9]),
        _evidence("transfers", [0.9, 0.9], 0, [0.5, 0.5]),
    ]
    assert [c.source for c in choose_per_site(before)] == ["predictive", "predictive"]
    assert all(c.by == "predictivity" for c in choose_per_site(before))
    # Night 2: only "predictive" has own twins. Site 0: they moved it (kept); site 1: they did not,
    # so the untried source is tried: the pairs carry no signal yet (every r near 0), so nothing
    # is decided against it.
    after = [
        _evidence("predictive", [0.05, 0.05], 300, [0.9, 0.9], own=[2.0, 0.02]),
        _evidence("transfers", [0.05, 0.05], 300, [0.5, 0.5], own=[np.nan, np.nan]),
    ]
    choices = choose_per_site(after)
    assert [c.source for c in choices] == ["predictive", "transfers"]
    assert [c.by for c in choices] == ["own twins", "exploration"]
    assert "moved the site 2.000" in choices[0].reason and "exploring" in choices[1].reason
    # Night 3: both tried at site 1: the one whose own twins moved it wins.
    later = [
        _evidence("predictive", [0.5, 0.5], 300, [0.9, 0.9], own=[2.0, 0.02]),
        _evidence("transfers", [0.05, 0.05], 300, [0.5, 0.5], own=[np.nan, 1.5]),
    ]
    assert [c.source for c in choose_per_site(later)] == ["predictive", "transfers"]


def test_exploration_skips_a_source_that_cannot_predict_the_site() -> None:
    """After one noisy day the incumbent is not clearly above zero at either site; a source with
    a fifth of its clean-image predictivity is not tried, one with no predictivity of its own
    (the ensemble) is when its predictions of the recorded pairs beat chance and is not when
    they do not, and with nothing eligible left the best measured source stays."""
    incumbent = _evidence("energy", [0.1, 0.1], 300, [0.8, 0.8], own=[0.3, 0.3], own_se=1.0)
    poor = _evidence("pixels", [0.1, 0.1], 300, [0.15, 0.6], own=[np.nan, np.nan])
    ensemble = _evidence("ensemble", [0.4, 0.4], 300, [np.nan, np.nan], own=[np.nan, np.nan])
    choices = choose_per_site([incumbent, poor])
    assert [c.source for c in choices] == ["energy", "pixels"]  # site 1: 0.6 >= half of 0.8
    assert [c.by for c in choices] == ["best measured", "exploration"]
    assert [c.source for c in choose_per_site([incumbent, poor, ensemble])] == ["ensemble", "pixels"]
    # The search on an energy-model brain: one direction per site predicts none of the pairs.
    search = _evidence("search", [-0.2, 0.4], 300, [np.nan, np.nan], own=[np.nan, np.nan])
    assert search.transfer.r_low[0] < 0 < search.transfer.r_low[1]
    choices = choose_per_site([incumbent, poor, search])
    assert [c.source for c in choices] == ["energy", "pixels"]  # site 0: not above chance
    assert [c.by for c in choices] == ["best measured", "exploration"]
    assert choose_per_site([incumbent, search])[1].source == "search"  # site 1: above chance
    # The share is a parameter: 0 explores everything, as before.
    assert [c.source for c in choose_per_site([incumbent, poor], explore_share=0.0)] == ["pixels", "pixels"]


def test_exploration_skips_a_source_whose_transfer_is_decided_against_it() -> None:
    """Where the recorded pairs carry signal (the incumbent predicts them, r 0.5 over 300 pairs),
    a source whose predictions of the same pairs correlate clearly less (r 0.05: the top of its
    95% CI far below 0.5) is not worth a day of twins, however well it predicts clean images; one
    whose CI still reaches the incumbent's r is tried. The incumbent is not clearly above zero at
    either site, so without the veto both would be explored."""
    incumbent = _evidence("linear", [0.5, 0.5], 300, [0.9, 0.9], own=[0.3, 0.3], own_se=1.0)
    decided = _evidence("energy", [0.05, 0.6], 300, [0.85, 0.85], own=[np.nan, np.nan])
    assert decided.transfer.r_high[0] < incumbent.transfer.r[0] <= decided.transfer.r_high[1]
    choices = choose_per_site([incumbent, decided])
    assert [c.source for c in choices] == ["linear", "energy"]
    assert [c.by for c in choices] == ["best measured", "exploration"]
    assert "energy not tried: its transfer r" in choices[0].reason  # the reason says why
    # With too few pairs to measure an r, nothing is decided: exploration proceeds.
    few = _evidence("energy", [0.05, 0.05], 3, [0.85, 0.85], own=[np.nan, np.nan])
    assert np.all(np.isnan(few.transfer.r))
    assert [c.source for c in choose_per_site([incumbent, few])] == ["energy", "energy"]


def test_own_twin_effect_counts_only_a_sources_twins_for_each_site() -> None:
    from models.transfer import own_twin_effect

    observed = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [0.0, 3.0], [9.0, 9.0]])
    l2 = np.array([1.0, 1.0, 2.0, 2.0, 1.0])
    direction = np.array([1.0, -1.0, 1.0, 1.0, 0.0])  # the last is a random twin: never counted
    target = np.array([0, 0, 1, 1, 0])
    mine = np.array([True, True, True, False, True])
    effect, se, n = own_twin_effect(observed, l2, direction, target, mine)
    assert effect[0] == 2.0 and n[0] == 2 and se[0] == 0.0
    assert np.isnan(effect[1]) and n[1] == 0  # one own twin is not enough for a standard error


def test_own_twin_effect_is_the_slope_on_distance_which_weights_the_larger_twins() -> None:
    """Recording noise does not grow with a twin's distance, so the least-squares slope through the
    origin is the efficient estimate: over many noisy days its spread is well below the spread of
    the mean of per-pair ratios, and both centre on the true change per unit L2."""
    from models.transfer import own_twin_effect

    rng = np.random.default_rng(0)
    l2 = np.tile([0.5, 1.0, 2.0], 6)  # the demo's epsilons, 18 twins for one site
    direction = np.where(np.arange(18) % 2 == 0, 1.0, -1.0)
    slopes, ratios, ses = [], [], []
    for _ in range(400):
        observed = (direction * 1.5 * l2 + rng.normal(0.0, 4.0, size=18))[:, None]
        effect, se, _ = own_twin_effect(observed, l2, direction, np.zeros(18, int), np.ones(18, bool))
        slopes.append(effect[0])
        ses.append(se[0])
        ratios.append(np.mean(direction * observed[:, 0] / l2))
    assert abs(np.mean(slopes) - 1.5) < 0.1 and abs(np.mean(ratios) - 1.5) < 0.2
    assert np.std(ratios) / np.std(slopes) > 1.5  # about sqrt(3) at these distances
    assert np.mean(ses) == pytest.approx(np.std(slopes), rel=0.15)  # the standard error is honest


def test_pair_difference_ridge_recovers_a_gradient_inside_the_probed_subspace() -> None:
    rng = np.random.default_rng(1)
    n_pix, n_dirs = 400, 12
    basis = np.linalg.qr(rng.normal(size=(n_pix, n_dirs)))[0]  # the proposals' subspace
    g = basis @ rng.normal(size=(n_dirs, 2))  # two sites' gradients, inside it
    deltas = (rng.normal(size=(300, n_dirs)) @ basis.T) * 0.5
    changes = deltas @ g + 0.05 * rng.normal(size=(300, 2))
    model = PairDifferenceRidge().fit(deltas, changes)
    cos = np.sum(model.coef_ * g, axis=0) / np.linalg.norm(model.coef_, axis=0) / np.linalg.norm(g, axis=0)
    assert np.all(cos > 0.99)
    held_out = site_transfer(model.loo_pred_, changes)
    assert np.all(held_out.r > 0.95)
    # Pure noise: the held-out predictions do not pretend to transfer.
    null = PairDifferenceRidge().fit(deltas, rng.normal(size=(300, 2)))
    assert np.all(np.abs(site_transfer(null.loo_pred_, rng.normal(size=(300, 2))).r) < 0.3)


def test_implausible_predictions_flag_only_far_extrapolation() -> None:
    low, high = np.array([5.0, 5.0]), np.array([45.0, 45.0])
    flags = implausible_predictions(np.array([[60.0, 830.0], [-40.0, 10.0]]), low, high)
    assert flags.tolist() == [[False, True], [True, False]]


def test_vone_front_end_is_band_limited_and_differentiable() -> None:
    bank = gabor_bank(4, 4.0)
    assert torch.allclose(bank.flatten(1).norm(dim=1), torch.ones(8), atol=1e-5)
    assert bank.flatten(1).sum(dim=1).abs().max() < 1e-4  # no response to uniform light
    net = VOneFrontEnd(grid=4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = net(x)
    assert out.shape[:2] == (2, 3 + 16 + (net.levels_for(32) - 1) * 48) and out.shape[2:] == (4, 4)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A uniform grey image drives no oriented cell: only the low-pass colour channels respond.
    grey = net(torch.full((1, 3, 32, 32), 0.5))
    assert grey[:, 3:].abs().max() < 1e-2


def test_ensemble_is_the_mean_of_its_members() -> None:
    class Lin(torch.nn.Module):
        def __init__(self, w: float) -> None:
            super().__init__()
            self.w, self.site_ids = w, ["a", "b"]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w * x.flatten(1)[:, :2]

    x = torch.rand(3, 1, 2, 2)
    ens = EnsembleEncoder([Lin(1.0), Lin(3.0)])
    assert torch.allclose(ens(x), 2.0 * x.flatten(1)[:, :2]) and ens.site_ids == ["a", "b"]
    other = Lin(1.0)
    other.site_ids = ["b", "a"]
    with pytest.raises(ValueError, match="same sites"):
        EnsembleEncoder([Lin(1.0), other])


def test_the_search_gets_its_share_only_where_it_predicts_the_pairs_and_nothing_works_yet() -> None:
    from models.selection import SiteChoice, search_share_sites

    search = _evidence("search", [0.5, 0.5, -0.2, 0.5], 300, [np.nan] * 4)
    few = _evidence("search", [0.9] * 4, 6, [np.nan] * 4)
    choices = [
        SiteChoice("m", "exploration", ""),
        SiteChoice("m", "own twins", ""),  # the chosen source works here: no share
        SiteChoice("m", "best measured", ""),  # the search predicts nothing here: no share
        SiteChoice("m", "predictivity", ""),
    ]
    assert search_share_sites(choices, search) == [True, False, False, True]
    assert search_share_sites(choices, few) == [False] * 4  # 6 pairs, 8 needed
    assert search_share_sites(choices, None) == [False] * 4


def test_plan_shards_gives_the_search_its_share_of_each_site() -> None:
    from itloop.night_params import NightConfig
    from worker.stages.choose import plan_shards

    cfg = NightConfig(clean_per_site=3, search_share=0.34, sites_per_shard=2)
    sources = {"a": "m1", "b": "m1", "c": "search-v", "d": "m2"}
    shards = plan_shards(["a", "b", "c", "d"], sources, "search-v", cfg, [1, 2], search_ready={"a", "b", "c"})
    made = {}
    for sh in shards:
        for site in sh["sites"]:
            lo, hi = sh["slots"]
            for slot in range(lo, hi):
                assert (site, slot) not in made, "a slot made twice"
                made[(site, slot)] = (sh["model_version"], sh["extras"])
    # Every site gets all its slots exactly once, and its targeted/random twins once.
    assert sorted(made) == [(s, k) for s in "abcd" for k in range(3)]
    assert made[("a", 0)] == ("search-v", False) and made[("a", 1)] == ("m1", True)
    assert all(made[("c", k)][0] == "search-v" for k in range(3))  # the search was chosen for c
    assert all(made[("d", k)][0] == "m2" for k in range(3))  # d: not enough pairs for the search yet
    for site in "abcd":  # targeted and random twins are made by exactly one shard per site
        assert sum(site in sh["sites"] and sh["extras"] for sh in shards) == 1
    # Without a search, one shard kind per source.
    plain = plan_shards(["a", "b"], {"a": "m1", "b": "m1"}, None, cfg, [1])
    assert [(s["model_version"], s["slots"]) for s in plain] == [("m1", [0, 3])]


def test_shrinkage_keeps_a_source_that_works_on_most_sites() -> None:
    from models.transfer import shrink_to_population

    rng = np.random.default_rng(5)
    true = np.full(12, 2.4)  # the source moves every site by the same amount
    se = np.full(12, 1.2)  # one day of own twins per site: half the sites look null by chance
    measured = true + se * rng.normal(size=12)
    assert np.sum(measured <= se) >= 2  # without pooling, these sites would be abandoned
    mean, sd = shrink_to_population(measured, se)
    assert np.all(mean > sd)  # with pooling, none is
    assert np.all(sd < se)
    # A source that works on half the sites and not the other half keeps the difference.
    split = np.r_[np.full(6, 4.0), np.zeros(6)] + 0.3 * rng.normal(size=12)
    mean, sd = shrink_to_population(split, np.full(12, 0.3))
    assert np.all(mean[:6] > 3.0) and np.all(np.abs(mean[6:]) < 1.0)
