"""The demo's report folder: PNG plots (matplotlib) and an HTML summary."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from demo.truth import sensitivity_records
from demo.yardstick import split_version


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(rows: list[dict[str, Any]], source: str, estimator: str) -> tuple[np.ndarray, ...]:
    pts = sorted(
        (r["epsilon"], r["value"], r["ci_low"], r["ci_high"])
        for r in rows
        if r["source"] == source
        and r["estimator"] == estimator
        and r["epsilon"] is not None
        and r["value"] is not None
    )
    if not pts:
        return (np.array([]),) * 4
    a = np.array(pts, dtype=float)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def write_report(
    out: Path, viewer: httpx.Client, days: list[dict[str, Any]], lab: dict[str, Any], brain: Any
) -> Path:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    last = max((d for d in days if d["truth"].get("epsilons")), key=lambda d: d["day"], default=None)
    figures: list[tuple[str, str]] = []

    if last is not None:
        rows = sensitivity_records(viewer, day=last["day"], population="true")
        t = last["truth"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for est, style in (("sign_corrected", "o-"), ("plain", "s--"), ("model_free_sign_corrected", "^:")):
            x, y, lo, hi = _curve(rows, "it", est)
            if len(x):
                ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, capsize=3, label=f"IT {est}")
        for source in sorted({r["source"] for r in rows if r["source"].startswith("model:")}):
            x, y, lo, hi = _curve(rows, source, "model")
            if len(x):
                ax.errorbar(
                    x,
                    y,
                    yerr=[y - lo, hi - y],
                    fmt="d-",
                    capsize=3,
                    alpha=0.8,
                    label=source.replace("model:", "model "),
                )
        rp = [r for r in rows if r["source"] == "it" and r["estimator"] == "random_pair" and r["value"]]
        if rp:
            ax.axhline(rp[0]["value"], color="grey", ls="--", label="random-pair baseline")
        ax.plot(t["epsilons"], t["pop_true_max"], "k*-", label="true sensitivity (exact)")
        ax.plot(t["epsilons"], t["pop_true_effect"], "kx:", label="true effect of shown images")
        ax.set_yscale("symlog", linthresh=0.1)  # models can be 10x more sensitive than IT
        ax.set_xlabel("epsilon (L2, [0,1] pixels)")
        ax.set_ylabel("normalised sensitivity")
        ax.set_title(f"Population sensitivity, day {last['day']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "sensitivity_vs_epsilon.png", dpi=120)
        plt.close(fig)
        figures.append(("sensitivity_vs_epsilon.png", "IT population vs models, baselines and ground truth"))

        fig, ax = plt.subplots(figsize=(5, 5))
        eff = np.array(t["true_effect"])
        for name, mk in (("plain", "s"), ("sign_corrected", "o")):
            est = np.array(t["estimates"][name])
            ok = np.isfinite(est) & np.isfinite(eff)
            ax.scatter(eff[ok], est[ok], marker=mk, alpha=0.6, label=name)
        lim = [0, float(np.nanmax(eff)) * 1.3 if np.isfinite(eff).any() else 1]
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.set_xlabel("true effect of the shown perturbations (per site, per eps)")
        ax.set_ylabel("estimate")
        ax.set_title("plain vs sign-corrected estimator")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plain_vs_sign_corrected.png", dpi=120)
        plt.close(fig)
        figures.append(("plain_vs_sign_corrected.png", "The plain estimator is biased up by trial noise"))

    measured = [d for d in days if d["truth"].get("epsilons")]
    budgets = [
        error_budget(
            d["truth"], lab["site_ids"], sensitivity_records(viewer, day=d["day"], estimator="sign_corrected")
        )
        | {"day": d["day"]}
        for d in measured
    ]
    if measured:
        fig, (ax, rel) = plt.subplots(1, 2, figsize=(10, 4))
        x = [b["day"] for b in budgets]
        ax.plot(x, [b["mae"] for b in budgets], "o-", color="#0072B2", label="mean |estimate - truth|")
        ax.plot(
            x, [b["noise_mae"] for b in budgets], "s--", color="#E69F00", label="expected from trial noise"
        )
        ax.plot(x, [b["bias"] for b in budgets], "^:", color="#000000", label="mean (estimate - truth)")
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_xticks(x)
        ax.set_xlabel("day")
        ax.set_ylabel("normalised sensitivity (site s.d.)")
        ax.set_title("Sign-corrected estimate vs ground truth")
        ax.legend(fontsize=7)
        rel.plot(x, [b["rel_error"] for b in budgets], "o-", color="#0072B2", label="error / true effect")
        rel.plot(x, [b["mean_true"] for b in budgets], "d--", color="#009E73", label="mean true effect")
        rel.set_xticks(x)
        rel.set_xlabel("day")
        rel.set_title("Error relative to the effect it measures")
        rel.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "error_by_day.png", dpi=120)
        plt.close(fig)
        figures.append(("error_by_day.png", "Per-site estimate error by day, and what it is made of"))

    versions = viewer.get("/model-versions", params={"limit": 500}).json()["items"]
    chosen = sorted((v for v in versions if v.get("chosen") and night_of(v) is not None), key=night_of)
    if chosen:
        # Nights are numbered as the API and the dashboard number them (night ids, from 1); the
        # night after recording day d is night d + 1 in a fresh demo (day 0 is the first day).
        nights = [night_of(v) for v in chosen]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(nights, [v.get("score") for v in chosen], "o-", label="median noise-ceiled r")
        ax.plot(
            nights,
            [(v.get("metrics") or {}).get("median_r") for v in chosen],
            "s--",
            label="median raw r",
        )
        ax.set_xticks(nights)
        ax.set_xlabel("night (as numbered by the API and the dashboard)")
        ax.set_ylabel("predictivity of the chosen model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "predictivity_by_day.png", dpi=120)
        plt.close(fig)
        figures.append(("predictivity_by_day.png", "Model predictivity per night (nights numbered from 1)"))

    summary = {
        "subject": lab["subject"],
        "sites": len(lab["site_ids"]),
        "brain": {
            "family": getattr(brain, "family", None),
            "natural_share": getattr(brain, "natural_share", None),
            "whitebox": "exact" if getattr(brain, "exact", True) else "attack",
        },
        "error_budget": budgets,
        "error_changes": explain_error_changes(budgets),
        "days": [
            {
                "day": d["day"],
                "batch": d["batch_id"],
                "presentations": d["presentations"],
                "spikes": d["spikes"],
                "mean_abs_error": d["truth"].get("mean_abs_error"),
                "mean_true_effect": d["truth"].get("mean_true_effect"),
                "spearman": d["truth"].get("spearman_vs_true_sensitivity"),
                "night_note": (d["night"].get("note") or ""),
                "yardstick": d["truth"].get("yardstick"),
            }
            for d in days
        ],
        "models": [
            {
                "version": v["version"],
                "score": v.get("score"),
                "chosen": v.get("chosen"),
                "reason": v.get("chosen_reason"),
            }
            for v in versions
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rows_html = "".join(
        f"<tr><td>{d['day']}</td><td>{html.escape(d['batch'])}</td><td>{d['presentations']}</td>"
        f"<td>{d['spikes']}</td><td>{_fmt(d['mean_abs_error'])}</td><td>{_fmt(d['mean_true_effect'])}</td>"
        f"<td>{_fmt(d['spearman'])}</td><td>{html.escape(d['night_note'])}</td></tr>"
        for d in summary["days"]
    )
    figs_html = "".join(
        f"<figure><img src='{f}'><figcaption>{html.escape(c)}</figcaption></figure>" for f, c in figures
    )
    (out / "index.html").write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>itloop demo report</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
figure{{display:inline-block;margin:8px}}img{{max-width:460px}}</style></head><body>
<h1>itloop closed-loop demo</h1>
<p>{len(lab["site_ids"])} simulated IT sites ({html.escape(lab["subject"])}), {len(days)} day(s).
Sensitivities are normalised by each site's spread over clean images. The truth comes from the
simulated brain: its exact adversarial sensitivity, and the true effect of the images actually shown.</p>
{_yardstick_html(summary)}
{_error_html(summary)}
<h2>Days</h2>
<table><tr><th>day</th><th>batch shown</th><th>presentations</th><th>spikes</th>
<th>mean abs error</th><th>mean true effect</th><th>Spearman vs true sensitivity</th><th>night</th></tr>
{rows_html}</table>{figs_html}</body></html>""")
    return out


def error_budget(truth: dict[str, Any], site_ids: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a day's per-site sign-corrected error is made of, against the simulated truth.

    ``mae`` is the report's headline (mean |estimate - truth| over site x epsilon cells);
    ``bias`` its signed mean; ``noise_mae`` the mean |error| that trial noise alone would give,
    ``sqrt(2/pi) * se`` per cell with ``se`` read off the cell's bootstrap 95% interval (width /
    3.92); ``rel_error`` is ``mae / mean_true``. The error is in units of site s.d., so a day whose
    twins move sites more (a better surrogate) has a larger error at the same relative accuracy:
    the estimator reads a lower bound (pairs the model got backwards count negative, and sigma
    includes trial noise), and both shortfalls grow with the effect.
    """
    eps = [float(e) for e in truth["epsilons"]]
    est = np.array(truth["estimates"]["sign_corrected"], dtype=float)
    eff = np.array(truth["true_effect"], dtype=float)
    se = np.full_like(est, np.nan)
    pairs = np.full_like(est, np.nan)
    row = {sid: i for i, sid in enumerate(site_ids)}
    for r in records:
        if r.get("source") != "it" or r.get("site_id") not in row or r.get("epsilon") is None:
            continue
        if float(r["epsilon"]) not in eps or r.get("ci_low") is None or r.get("ci_high") is None:
            continue
        i, e = row[r["site_id"]], eps.index(float(r["epsilon"]))
        se[i, e] = (float(r["ci_high"]) - float(r["ci_low"])) / 3.92
        pairs[i, e] = r.get("n_pairs") or np.nan
    ok = np.isfinite(est) & np.isfinite(eff)
    if not ok.any():
        nan = float("nan")
        return {"cells": 0, "mae": nan, "bias": nan, "noise_mae": nan, "mean_true": nan, "rel_error": nan}
    err = est[ok] - eff[ok]
    mae, mean_true = float(np.mean(np.abs(err))), float(np.mean(eff[ok]))
    has_se = ok & np.isfinite(se)
    return {
        "cells": int(ok.sum()),
        "mae": mae,
        "bias": float(np.mean(err)),
        "noise_mae": float(np.sqrt(2 / np.pi) * np.mean(se[has_se])) if has_se.any() else float("nan"),
        "mean_true": mean_true,
        "rel_error": mae / mean_true if mean_true > 0 else float("nan"),
        "pairs_per_cell": float(np.nanmedian(pairs[ok])) if np.isfinite(pairs[ok]).any() else float("nan"),
    }


def explain_error_changes(budgets: list[dict[str, Any]]) -> list[str]:
    """One sentence per day whose error rose over the day before, naming what rose with it."""
    out = []
    for a, b in zip(budgets, budgets[1:], strict=False):
        if not (np.isfinite(a["mae"]) and np.isfinite(b["mae"])) or b["mae"] <= a["mae"]:
            continue
        why = []
        if b["mean_true"] > a["mean_true"]:
            why.append(
                f"the twins moved sites more (mean true effect {a['mean_true']:.3f} -> {b['mean_true']:.3f}"
                " s.d.), and the error is in the same units"
            )
        if b["noise_mae"] > a["noise_mae"]:
            why.append(
                f"trial noise alone accounts for more ({a['noise_mae']:.3f} -> {b['noise_mae']:.3f}; "
                f"median pairs per site and epsilon {a.get('pairs_per_cell', float('nan')):g} -> "
                f"{b.get('pairs_per_cell', float('nan')):g})"
            )
        if b["bias"] < a["bias"] and b["bias"] < 0:
            why.append(
                f"the estimate fell further below the truth (bias {a['bias']:+.3f} -> {b['bias']:+.3f}): "
                "it is a lower bound, short by the pairs the model got backwards (counted negative) and "
                "by the trial noise inside sigma, and both shortfalls grow with the effect"
            )
        if np.isfinite(b["noise_mae"]) and b["mae"] <= 1.2 * b["noise_mae"]:
            why.append(
                f"the error is about what trial noise alone predicts ({b['noise_mae']:.3f}), so a change "
                "of this size is within noise"
            )
        if not why:
            why.append("none of its parts grew: with a few sites this is sampling variation")
        better = (
            np.isfinite(b["rel_error"]) and np.isfinite(a["rel_error"]) and b["rel_error"] <= a["rel_error"]
        )
        note = (
            f"; relative to the effect the error fell ({a['rel_error']:.2f} -> {b['rel_error']:.2f}), "
            "so the estimate did not get worse"
            if better
            else ""
        )
        out.append(
            f"Day {a['day']} to day {b['day']}: error {a['mae']:.3f} -> {b['mae']:.3f} because "
            + "; ".join(why)
            + note
            + "."
        )
    return out


def _error_html(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{b['day']}</td><td>{b['cells']}</td><td>{_fmt(b['mae'])}</td><td>{_fmt(b['noise_mae'])}</td>"
        f"<td>{_fmt(b['bias'])}</td><td>{_fmt(b['mean_true'])}</td><td>{_fmt(b['rel_error'])}</td>"
        f"<td>{_fmt(b.get('pairs_per_cell'))}</td></tr>"
        for b in summary["error_budget"]
    )
    why = "".join(f"<li>{html.escape(t)}</li>" for t in summary["error_changes"]) or (
        "<li>The error did not rise from one day to the next.</li>"
    )
    return f"""<h2>Why the error moves from day to day</h2>
<p>The error is |sign-corrected estimate − true effect of the shown twins| per site and epsilon, in
units of the site's s.d. It has three parts: trial noise (what the bootstrap interval measures),
pairs the model got backwards (the estimator counts them negative, so it reads a lower bound),
and sigma (the estimator's spread of clean responses includes trial noise, which shrinks every
normalised figure a little). The last two scale with the effect itself, so when a better model
makes twins that move sites more, the error in site s.d. can rise while the estimate gets
relatively better. The table splits it per day.</p>
<table><tr><th>day</th><th>cells</th><th>mean abs error</th><th>expected from trial noise</th>
<th>bias (estimate − truth)</th><th>mean true effect</th><th>error / effect</th>
<th>median pairs per cell</th></tr>{rows}</table><ul>{why}</ul>"""


def night_of(version: dict[str, Any]) -> int | None:
    """The night that fitted a model version: ``trained_on.night`` (a night id, from 1), as the
    dashboard reads it; else the ``night<N>-`` prefix of the version's name."""
    night = (version.get("trained_on") or {}).get("night")
    if night is None:
        return split_version(str(version.get("version", "")))[0]
    try:
        return int(night)
    except (TypeError, ValueError):
        return None


def _fmt(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _yardstick_html(summary: dict[str, Any]) -> str:
    """Per day and epsilon: found fractions, the random floor, Spearman; per site: the surrogate."""
    b = summary["brain"]
    rows, last = [], None
    for d in summary["days"]:
        y = d.get("yardstick") or {}
        for e in y.get("by_epsilon", []):
            rows.append(
                f"<tr><td>{d['day']}</td><td>{e['epsilon']:g}</td><td>{_fmt(e['found_median'])}</td>"
                f"<td>{_fmt(e['found_mean'])}</td><td>{_fmt(e.get('found_either_median'))}</td>"
                f"<td>{_fmt(e['random_median'])}</td>"
                f"<td>{_fmt(e['random_mean'])}</td><td>{_fmt(e['shipped_over_random'])}</td>"
                f"<td>{_fmt(e['spearman'])}</td><td>{_fmt(e.get('spearman_to_date'))}</td>"
                f"<td>{_fmt(e.get('spearman_true_effect'))}</td>"
                f"<td>{_fmt(e.get('spearman_estimate_vs_effect'))}</td></tr>"
            )
        if y.get("sites"):
            last = y
    by_source = "".join(
        f"<tr><td>{d['day']}</td><td>{html.escape(name)}</td><td>{v['n']}</td>"
        f"<td>{_fmt(v['median'])}</td><td>{_fmt(v['mean'])}</td></tr>"
        for d in summary["days"]
        for name, v in ((d.get("yardstick") or {}).get("by_source") or {}).items()
    )
    sites = "".join(
        f"<tr><td>{html.escape(s['site_id'])}</td><td>{html.escape(str(s['candidate']))}</td>"
        f"<td>{html.escape(str(s['model_version']))}</td><td>{_fmt(s['transfer_sign'])}</td>"
        f"<td>{_fmt(s['transfer_r'])}</td><td>{_fmt(s['found_median'])}</td></tr>"
        for s in (last or {}).get("sites", [])
    )
    return f"""<h2>Yardstick: brain family {html.escape(str(b["family"]))}</h2>
<p>Natural-aligned share of its sensitive directions: {_fmt(b["natural_share"])}; white-box reference:
{html.escape(str(b["whitebox"]))}. Found fraction: the brain's true change at a twin's target site in the
twin's direction (up or down) divided by the white-box change in that direction at the same parent, site
and epsilon (1 = the best twin for that goal); "of worst case": the |change| over the site's largest
change in either direction, which a down twin cannot reach where rates can rise far more than they fall;
random twins (judged in the direction they moved) give the floor. Spearman: per-site sign-corrected
estimate against per-site white-box sensitivity, from the day's twins alone and to date (every day's
twins so far, against the white-box values at every parent used so far). Two more columns say why a
Spearman is low: "targeting ceiling" ranks sites by the brain's true, noise-free change under the shipped
twins (what perfect recordings of these twins would reach); "noise" compares the estimate with that true
change (what recording noise leaves of the ranking).</p>
<table><tr><th>day</th><th>epsilon</th><th>found median</th><th>found mean</th><th>of worst case, median</th>
<th>random median</th>
<th>random mean</th><th>shipped / random</th><th>Spearman vs white-box</th><th>Spearman to date</th>
<th>targeting ceiling</th><th>noise</th></tr>
{"".join(rows)}</table>
<h3>Found fraction by source</h3>
<p>Which of the night's sources (each candidate, their ensemble, the across-day search) made the day's
twins, and how much of the white-box change those twins found.</p>
<table><tr><th>day</th><th>source</th><th>twins</th><th>found median</th><th>found mean</th></tr>
{by_source}</table>
<h3>Who made each site's twins{f" (day {last['day']})" if last else ""}</h3>
<table><tr><th>site</th><th>candidate</th><th>model version</th><th>transfer sign</th><th>transfer r</th>
<th>found median</th></tr>{sites}</table>"""
