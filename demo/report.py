"""The demo's report folder: PNG plots (matplotlib) and an HTML summary."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from demo.truth import sensitivity_records


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
    if measured:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([d["day"] for d in measured], [d["truth"]["mean_abs_error"] for d in measured], "o-")
        ax.set_xlabel("day")
        ax.set_ylabel("mean |estimate - truth| (sign-corrected)")
        ax.set_title("Estimate error against the ground truth")
        fig.tight_layout()
        fig.savefig(out / "error_by_day.png", dpi=120)
        plt.close(fig)
        figures.append(("error_by_day.png", "Per-site estimate error by day"))

    versions = viewer.get("/model-versions", params={"limit": 500}).json()["items"]
    chosen = sorted((v for v in versions if v.get("chosen")), key=lambda v: v["id"])
    if chosen:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(len(chosen)), [v.get("score") for v in chosen], "o-", label="median noise-ceiled r")
        ax.plot(
            range(len(chosen)),
            [(v.get("metrics") or {}).get("median_r") for v in chosen],
            "s--",
            label="median raw r",
        )
        ax.set_xlabel("night")
        ax.set_ylabel("predictivity of the chosen model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "predictivity_by_day.png", dpi=120)
        plt.close(fig)
        figures.append(("predictivity_by_day.png", "Model predictivity per night"))

    summary = {
        "subject": lab["subject"],
        "sites": len(lab["site_ids"]),
        "brain": {
            "family": getattr(brain, "family", None),
            "natural_share": getattr(brain, "natural_share", None),
            "whitebox": "exact" if getattr(brain, "exact", True) else "attack",
        },
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
<table><tr><th>day</th><th>batch shown</th><th>presentations</th><th>spikes</th>
<th>mean abs error</th><th>mean true effect</th><th>Spearman vs true sensitivity</th><th>night</th></tr>
{rows_html}</table>{figs_html}</body></html>""")
    return out


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
                f"<td>{_fmt(e['found_mean'])}</td><td>{_fmt(e['random_median'])}</td>"
                f"<td>{_fmt(e['random_mean'])}</td><td>{_fmt(e['shipped_over_random'])}</td>"
                f"<td>{_fmt(e['spearman'])}</td><td>{_fmt(e.get('spearman_to_date'))}</td></tr>"
            )
        if y.get("sites"):
            last = y
    sites = "".join(
        f"<tr><td>{html.escape(s['site_id'])}</td><td>{html.escape(str(s['candidate']))}</td>"
        f"<td>{html.escape(str(s['model_version']))}</td><td>{_fmt(s['transfer_sign'])}</td>"
        f"<td>{_fmt(s['transfer_r'])}</td><td>{_fmt(s['found_median'])}</td></tr>"
        for s in (last or {}).get("sites", [])
    )
    return f"""<h2>Yardstick: brain family {html.escape(str(b["family"]))}</h2>
<p>Natural-aligned share of its sensitive directions: {_fmt(b["natural_share"])}; white-box reference:
{html.escape(str(b["whitebox"]))}. Found fraction: the brain's true change at a twin's target site divided by
the white-box change at the same parent, site and epsilon (1 = the brain's own worst case); random twins
give the floor. Spearman: per-site sign-corrected estimate against per-site white-box sensitivity, from
the day's twins alone and to date (every day's twins so far).</p>
<table><tr><th>day</th><th>epsilon</th><th>found median</th><th>found mean</th><th>random median</th>
<th>random mean</th><th>shipped / random</th><th>Spearman vs white-box</th><th>Spearman to date</th></tr>
{"".join(rows)}</table>
<h3>Who made each site's twins{f" (day {last['day']})" if last else ""}</h3>
<table><tr><th>site</th><th>candidate</th><th>model version</th><th>transfer sign</th><th>transfer r</th>
<th>found median</th></tr>{sites}</table>"""
