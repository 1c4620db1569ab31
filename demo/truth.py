"""Ground truth for a demo day: what the brain really did, against what itloop estimated.

Two truths per site and epsilon, both normalised by the site's true spread over the
day's clean images:

* the true effect of the perturbations actually shown (what the sign-corrected
  estimator is unbiased for), and
* the true adversarial sensitivity, the exact maximum over the eps ball (measured
  sensitivities are lower bounds of it; a better surrogate gets closer).
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import numpy as np
from scipy.stats import spearmanr


def sensitivity_records(viewer: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``GET /analysis/sensitivity`` for these filters."""
    items, offset = [], 0
    while True:
        r = viewer.get("/analysis/sensitivity", params={**params, "limit": 500, "offset": offset})
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return items


def evaluate_day(
    viewer: httpx.Client,
    rig: Any,
    run: Any,
    site_ids: list[str],
    day: int,
    history: Any = None,
) -> dict[str, Any]:
    """The day's truth; ``history`` (demo.yardstick.History) carries the yardstick across days."""
    brain = rig.brain
    shas = sorted({im.sha256 for im in run.manifest.images})
    lineage = {}
    for sha in shas:
        r = viewer.get(f"/images/{sha}/lineage")
        r.raise_for_status()
        lineage[sha] = r.json()
    pix = {sha: rig._pixels(sha).astype(np.float64) / 255.0 for sha in shas}
    clean = [s for s in shas if lineage[s]["kind"] not in ("perturbed", "targeted", "random")]
    rates = {s: r for s, r in zip(shas, brain.rates(np.stack([pix[s] for s in shas])), strict=True)}
    sigma = np.std(np.stack([rates[s] for s in clean]), axis=0, ddof=1)  # (n_sites,)
    guided = [s for s in shas if lineage[s]["kind"] == "perturbed"]
    from demo.yardstick import evaluate_yardstick

    yardstick = evaluate_yardstick(viewer, brain, lineage, pix, site_ids, day, history)
    if not guided:
        return {"day": day, "epsilons": [], "pairs": 0, "yardstick": yardstick}
    parent_sha = {s: lineage[s]["parent_sha256"] for s in guided}
    epsilons = sorted({float(lineage[s]["epsilon"]) for s in guided})
    col = {sid: i for i, sid in enumerate(site_ids)}
    effect = np.full((len(site_ids), len(epsilons)), np.nan)
    true_max = np.full_like(effect, np.nan)
    for e, eps in enumerate(epsilons):
        for sid, i in col.items():
            mine = [
                s
                for s in guided
                if lineage[s]["site_id"] == sid
                and float(lineage[s]["epsilon"]) == eps
                and parent_sha.get(s) in pix
            ]
            if not mine:
                continue
            eff = [abs(rates[s][i] - rates[parent_sha[s]][i]) for s in mine]
            effect[i, e] = np.mean(eff) / sigma[i]
            parents = sorted({parent_sha[s] for s in mine})
            # Only site i at its own parents: for a family whose truth is an attack, cost matters.
            sens = brain.true_sensitivity_cases(
                np.stack([pix[p] for p in parents]), np.full(len(parents), i), eps
            ).max
            true_max[i, e] = float(np.mean(sens)) / sigma[i]
    est = {
        name: np.full_like(effect, np.nan) for name in ("sign_corrected", "plain", "plain_noise_corrected")
    }
    pop = {}
    for name, arr in est.items():
        for rec in sensitivity_records(viewer, day=day, estimator=name, source="it"):
            if rec.get("epsilon") is None or rec["value"] is None:
                continue
            e = epsilons.index(float(rec["epsilon"])) if float(rec["epsilon"]) in epsilons else None
            if e is None:
                continue
            if rec.get("site_id") is None:
                pop[(name, e)] = (rec["value"], rec.get("ci_low"), rec.get("ci_high"))
            elif rec["site_id"] in col:
                arr[col[rec["site_id"]], e] = rec["value"]
    sc = est["sign_corrected"]
    ok = np.isfinite(sc) & np.isfinite(effect)
    abs_err = float(np.mean(np.abs(sc[ok] - effect[ok]))) if ok.any() else float("nan")
    with warnings.catch_warnings():  # a site with no pairs today is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        site_est = np.nanmean(sc, axis=1)
        site_true = np.nanmean(true_max, axis=1)
    good = np.isfinite(site_est) & np.isfinite(site_true)
    rho = float(spearmanr(site_est[good], site_true[good]).statistic) if good.sum() > 2 else float("nan")
    return {
        "day": day,
        "epsilons": epsilons,
        "pairs": len(guided),
        "true_effect": effect.tolist(),
        "true_max": true_max.tolist(),
        "estimates": {k: v.tolist() for k, v in est.items()},
        "population": {f"{k[0]}@{epsilons[k[1]]}": v for k, v in pop.items()},
        "pop_true_effect": np.nanmean(effect, axis=0).tolist(),
        "pop_true_max": np.nanmean(true_max, axis=0).tolist(),
        "mean_abs_error": abs_err,
        "mean_true_effect": float(np.nanmean(effect)),
        "spearman_vs_true_sensitivity": rho,
        "yardstick": yardstick,
    }
