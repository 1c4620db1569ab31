"""Run every benchmark and print one table: benchmark, figure, value, goal, ratio and pass.

``python -m benchmarks.run_all [--quick] [--only NAME ...]``. Each benchmark module's
``run(quick)`` is called in turn; a benchmark that raises is reported as a failed row in the
table (with the error) and the others still run. All results, raw and summarised, are written
to ``benchmarks/results/all.json``.

In the table, ``ratio`` is value / goal for "at least" goals and goal / value for "below"
goals, so a ratio >= 1 always means the goal is met.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "all.json"


@dataclass
class Row:
    """One line of the table."""

    benchmark: str
    figure: str
    value: float | str
    goal: str = "-"
    ratio: float | None = None
    passed: bool | None = None


def _row(bench: str, figure: str, value: float, op: str = "", goal: float | None = None) -> Row:
    """A figure with an optional goal ``op goal`` (op is ">=", ">", "<" or "<=")."""
    if not op or goal is None:
        return Row(bench, figure, value)
    if op == ">":  # a strict sign goal (e.g. a rise > 0): no meaningful ratio
        return Row(bench, figure, value, f"> {goal:g}", None, value > goal)
    if op == ">=":
        ratio, ok = (value / goal if goal else None), value >= goal
    else:
        ratio = goal / value if value else float("inf")
        ok = value < goal if op == "<" else value <= goal
    return Row(bench, figure, value, f"{op} {goal:g}", ratio, ok)


def _readout(r: dict) -> list[Row]:
    b = "readout"
    p = r["problem"]
    size = f"{p['n_images']}x{p['n_features']}x{p['n_sites']}"
    rows = [
        _row(
            b,
            f"MultiRidgeCV fit s ({size})",
            r["multiridgecv_fit_s"],
            *(("<", 2.0) if not r["quick"] else ()),
        ),
        _row(b, "sklearn RidgeCV fit s", r["sklearn_ridgecv_fit_s"]),
        _row(b, "speed-up vs sklearn (wall)", r["speedup"], ">=", 5.0),
        _row(b, "speed-up vs sklearn (CPU time)", r["speedup_cpu"], ">=", 5.0),
        _row(b, "same chosen alpha (fraction)", r["same_alpha_fraction"], ">=", 1.0),
        _row(b, "max rel. prediction diff", r["max_rel_prediction_diff"], "<=", 1e-5),
    ]
    return rows


def _synthesis(r: dict) -> list[Row]:
    b = "synthesis"
    rows = []
    for sec in r["sections"]:
        budgets = sec["budgets"]
        table = {int(k): v for k, v in sec["rows"].items()}
        worst_a = min(table[k]["ratio_apgd"] for k in budgets)
        worst_p = min(table[k]["ratio_pgd"] for k in budgets)
        rows.append(_row(b, f"{sec['name']} eps={sec['eps']}: min ratio vs APGD-L2", worst_a, ">=", 1.0))
        rows.append(_row(b, f"{sec['name']} eps={sec['eps']}: min ratio vs PGDL2", worst_p, ">=", 1.0))
        at10 = [table[k]["ratio_best_at_10x"] for k in budgets if table[k]["ratio_best_at_10x"] is not None]
        if at10:
            rows.append(
                _row(b, f"{sec['name']} eps={sec['eps']}: min vs best@10x budget", min(at10), ">=", 0.99)
            )
    for key in ("throughput", "throughput_224", "throughput_resnet50"):
        if key not in r:
            continue
        t = r[key]
        rows.append(_row(b, f"{t['label']}: engine gradient steps/s (CPU)", t["engine_steps_per_s"]))
        rows.append(_row(b, f"{t['label']}: throughput vs PGDL2 as called", t["ratio"], ">=", 1.0))
        rows.append(
            _row(b, f"{t['label']}: throughput vs PGDL2 at the engine's call size", t["ratio_chunked"])
        )
        if "ratio_vs_fastest_pgd" in t:
            # Stricter than the goal: PGDL2 handed the engine's channels-last speed-up by a wrapper.
            fig = f"{t['label']}: throughput vs the fastest PGDL2 variant (incl. channels-last)"
            rows.append(_row(b, fig, t["ratio_vs_fastest_pgd"]))
    if "cuda" in r:
        c = r["cuda"]
        rows.append(_row(b, "CUDA bf16 paper-scale night (h)", c["bf16"]["night_hours"], "<", 8.0))
        rows.append(_row(b, "CUDA |bf16 - fp32| change", abs(c["bf16_vs_fp32_change"]), "<", 0.02))
    return rows


def _gpu(r: dict) -> list[Row]:
    """Issue 21.5's figures; without a GPU one row says so and nothing is estimated."""
    b = "gpu"
    if not r["gpu_measured"]:
        return [Row(b, "not measured: no GPU on this machine", "-")]
    rows: list[Row] = []
    t = r.get("throughput", {})
    if "engine_fp32_steps_per_s" in t:
        rows.append(_row(b, "ResNet-50 engine gradient steps/s, fp32", t["engine_fp32_steps_per_s"]))
        rows.append(_row(b, "ResNet-50 engine gradient steps/s, bf16", t["engine_bf16_steps_per_s"]))
        rows.append(
            _row(b, "throughput fp32 vs the fastest PGDL2", t["engine_fp32_vs_fastest_pgd"], ">=", 1.0)
        )
        rows.append(
            _row(b, "throughput bf16 vs the fastest PGDL2", t["engine_bf16_vs_fastest_pgd"], ">=", 1.0)
        )
    for key in ("strength_budget200", "strength_budget2000"):
        if "bf16_strength" in r.get(key, {}):
            fig = f"bf16 strength vs fp32, budget {r[key]['budget']}"
            rows.append(_row(b, fig, r[key]["bf16_strength"], ">=", 0.99))
    for label in ("fp32", "bf16"):
        if f"paper_night_min_{label}" in r:
            fig = f"paper-scale night, {label} (min, projected from a measured slice)"
            rows.append(_row(b, fig, r[f"paper_night_min_{label}"], "<=", r["goal_night_min"]))
    if "total_min" in r.get("training", {}):
        tr = r["training"]
        rows.append(
            _row(
                b,
                "data-driven surrogate training, 5k images x 200 sites (min)",
                tr["total_min"],
                "<=",
                tr["goal_min"],
            )
        )
    return rows or [Row(b, "FAILED: no section finished", "-", passed=False)]


def _api(r: dict) -> list[Row]:
    b = "api"
    rows = []
    rate = f"{r['rate_rps']:.0f} req/s"
    for kind in ("manifest", "image"):
        s = r[kind]
        rows.append(_row(b, f"{kind} GET p50 ms @ {rate}", s["p50_ms"]))
        rows.append(_row(b, f"{kind} GET p99 ms @ {rate}", s["p99_ms"], "<", r.get("goal_p99_ms", 25.0)))
    rows.append(_row(b, "errors (non-200)", float(r["errors"]), "<=", 0.0))
    rows.append(_row(b, "server CPU ms / request", r["server_cpu_ms_per_request"]))
    par = r.get("with_uploads")
    if par is not None:
        for kind in ("manifest", "image"):
            figure = f"{kind} GET p99 ms @ {rate}, spike uploads in parallel"
            rows.append(_row(b, figure, par[kind]["p99_ms"], "<", r.get("goal_p99_ms", 25.0)))
        rows.append(_row(b, "uploads done during the loaded window", float(par["uploads_done"])))
    return rows


def _ingest(r: dict) -> list[Row]:
    b = "ingest"
    return [
        _row(
            b, f"ingest spikes/s ({r['n_spikes']:,} spikes, PostgreSQL)", r["ingest_spikes_per_s"], ">=", 1e6
        ),
        _row(b, "ORM row-by-row spikes/s", r["orm_spikes_per_s"]),
        _row(b, "speed-up vs ORM inserts", r["speedup"]),
        _row(b, "idempotent repeat upload s", r["repeat_upload_s"]),
    ]


def _demo(r: dict) -> list[Row]:
    label = f"`{r['command']}` wall s"
    if r["quick"]:  # the goal is for the full 3-day run; quick is a smoke figure
        return [_row("demo", label + " (goal is for --days 3)", r["wall_s"])]
    return [_row("demo", label, r["wall_s"], "<", r["goal_s"])]


def _science(r: dict) -> list[Row]:
    """Per family: found fraction, its rise, Spearman and shipped / random on the last day.

    Goals only where the family's sensitive directions are at least half natural-aligned;
    a figure that could not be computed (every run failed) is a failed row.
    """
    b, last = "science", r["day_last"]
    g = r["goals"]
    rows = []
    for f in r["families"]:
        name, goals = f["family"], f["goals_apply"]
        held_out = ", held out" if f.get("held_out") else ""
        tag = f"{name} ({f['runs']} seeds, share {f['natural_share']:.2f}{held_out})"
        if f["runs"] == 0:
            rows.append(Row(b, f"{tag}: every run failed", "no data", passed=False))
            continue
        figures = (
            (f"found fraction day {last}", f["found_day_last"], ">=", g["found"]),
            (f"found fraction rise day 1 to {last}", f["found_rise"], ">", 0.0),
            (f"spearman vs white-box day {last}", f.get("spearman_to_date_day_last"), ">=", g["spearman"]),
            (
                f"shipped / random day {last}",
                f["shipped_over_random_day_last"],
                ">=",
                g["shipped_over_random"],
            ),
        )
        for figure, value, op, goal in figures:
            label = f"{tag}: {figure}"
            if value is None:
                rows.append(Row(b, label, "n/a", passed=False if goals else None))
            elif goals:
                rows.append(_row(b, label, value, op, goal))
            else:
                rows.append(_row(b, label + " (report only)", value))
        rows.append(
            _row(b, f"{tag}: random-direction found fraction day {last}", f["random_day_last"] or 0.0)
        )
        for key, figure in (
            ("found_either_day_last", "found fraction of the worst case, either direction"),
            ("spearman_day_last", "spearman of the day's own estimate"),
            ("spearman_true_effect_day_last", "spearman targeting ceiling (true change of the twins)"),
            ("spearman_estimate_vs_effect_day_last", "spearman of the estimate vs the true change (noise)"),
            (
                "spearman_across_epsilons_to_date_day_last",
                "spearman to date, one slope per site over epsilons",
            ),
        ):
            if f.get(key) is not None:
                rows.append(_row(b, f"{tag}: {figure} day {last}", f[key]))
        if f["failed_runs"]:
            rows.append(Row(b, f"{tag}: failed runs", float(f["failed_runs"]), "<= 0", None, False))
    return rows


# name -> (module, summariser)
BENCHMARKS: dict[str, tuple[str, Callable[[dict], list[Row]]]] = {
    "readout": ("benchmarks.bench_readout", _readout),
    "synthesis": ("benchmarks.bench_synthesis", _synthesis),
    "api": ("benchmarks.bench_api", _api),
    "ingest": ("benchmarks.bench_ingest", _ingest),
    "demo": ("benchmarks.bench_demo", _demo),
    "science": ("benchmarks.bench_science", _science),
    "gpu": ("benchmarks.bench_gpu", _gpu),
}


def run_one(name: str, quick: bool) -> tuple[dict[str, Any], list[Row]]:
    """Import and run one benchmark; never raises (a failure becomes a failed row)."""
    module_name, summarise = BENCHMARKS[name]
    t0 = time.perf_counter()
    record: dict[str, Any] = {"module": module_name, "load_avg_1m_before": os.getloadavg()[0]}
    try:
        module = importlib.import_module(module_name)
        result = module.run(quick=quick)
    except BaseException as exc:  # one failing benchmark must not stop the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        record["wall_s"] = time.perf_counter() - t0
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
        return record, [Row(name, "FAILED", message, passed=False)]
    record.update(ok=True, wall_s=time.perf_counter() - t0, result=result)
    try:
        rows = summarise(result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        rows = [
            Row(name, "summary failed (result shape changed?)", f"{type(exc).__name__}: {exc}", passed=False)
        ]
    return record, rows


def _fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def format_table(rows: list[Row]) -> str:
    """The one table: benchmark, figure, value, goal, ratio/pass."""
    header = ("benchmark", "figure", "value", "goal", "ratio/pass")
    lines = []
    for r in rows:
        verdict = "-" if r.passed is None else ("pass" if r.passed else "FAIL")
        ratio = "" if r.ratio is None else (">99 " if r.ratio > 99 else f"{r.ratio:.3f} ")
        lines.append((r.benchmark, r.figure, _fmt(r.value), r.goal, f"{ratio}{verdict}"))
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problems (minutes, not tens of minutes)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME", help="run only these"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    started = time.time()
    records: dict[str, Any] = {}
    rows: list[Row] = []
    for name in names:
        print(f"\n######## {name} ########", flush=True)
        record, bench_rows = run_one(name, args.quick)
        records[name] = record
        rows += bench_rows
        status = "ok" if record["ok"] else f"FAILED ({record['error'][:200]})"
        print(f"######## {name}: {status} in {record['wall_s']:.1f} s", flush=True)
    table = format_table(rows)
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(table)
    payload = {
        "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": time.time() - started,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_end": list(load),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": [asdict(r) for r in rows],
        "benchmarks": records,
        "table": table,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
