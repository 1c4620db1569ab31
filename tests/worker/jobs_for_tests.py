"""Job kinds used only by the worker tests.

Registered when imported: tests import it directly, and subprocess workers import
it through ``ITLOOP_EXTRA_JOB_MODULES=tests.worker.jobs_for_tests``. Side effects
go to a marker file (one line per completed run) so a test can count them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.context import JobContext
from jobs.registry import job


def mark(ctx: JobContext) -> None:
    path = ctx.params.get("marker")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{ctx.kind} {ctx.job_id} {ctx.attempt} {ctx.params.get('tag', '')}\n")


def marks(path: Path) -> list[list[str]]:
    """The marker file's lines, split: [kind, job_id, attempt, tag]."""
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines()]


@job("test.echo", max_attempts=1)
def echo(ctx: JobContext) -> dict[str, Any]:
    mark(ctx)
    return {
        "tag": ctx.params.get("tag"),
        "upstream": sorted(r["tag"] for r in ctx.dependency_results().values() if r.get("tag")),
    }


@job("test.fail", max_attempts=3)
def fail(ctx: JobContext) -> dict[str, Any]:
    """Fail on the first ``fail_times`` attempts, then succeed."""
    if ctx.attempt <= int(ctx.params.get("fail_times", 0)):
        raise RuntimeError(f"planned failure {ctx.attempt}\nsecond line of the message")
    mark(ctx)
    return {"attempt": ctx.attempt}


@job("test.checkpoint", max_attempts=3)
def checkpoint(ctx: JobContext) -> dict[str, Any]:
    """Read a checkpoint file through the real loader (``models.backbones``); missing ones raise."""
    from models.backbones import checkpoint_sha256

    mark(ctx)
    return {"sha256": checkpoint_sha256(ctx.params["path"])}


@job("test.sleep", max_attempts=3)
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep cooperatively (checking cancellation and timeout), then leave a mark."""
    seconds = float(ctx.params.get("seconds", 1.0))
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        ctx.progress((time.monotonic() - start) / seconds, "sleeping")
        time.sleep(0.02)
    mark(ctx)
    return {"slept": seconds, "attempt": ctx.attempt}


@job("test.block", max_attempts=3)
def block(ctx: JobContext) -> dict[str, Any]:
    """Sleep without ever looking at the context: only RQ's hard timeout can stop it."""
    time.sleep(float(ctx.params.get("seconds", 5.0)))
    mark(ctx)
    return {}


@job("test.fanout", max_attempts=1)
def fanout(ctx: JobContext) -> dict[str, Any]:
    """Spawn ``n`` echo children; whatever depends on this job also waits for them."""
    n = int(ctx.params.get("n", 3))
    children = ctx.spawn(
        "test.echo", [{"tag": f"child{i}", "marker": ctx.params.get("marker")} for i in range(n)]
    )
    mark(ctx)
    return {"children": children}


def night_step(ctx: JobContext) -> dict[str, Any]:
    """Stand-in for every night stage in pipeline-wiring tests (installed with registry.overridden)."""
    ctx.params.setdefault("marker", ctx.params.get("night_params", {}).get("marker"))
    mark(ctx)
    out: dict[str, Any] = {"kind": ctx.kind, "candidate": ctx.params.get("candidate")}
    if ctx.kind == "night.select":
        out["chosen"] = sorted(r["candidate"] for r in ctx.results_of("night.refit"))
        out["shards"] = [{"eps": 1.0}, {"eps": 2.0}]
    if ctx.kind == "night.synthesize":
        out["eps"] = ctx.params["eps"]
    return out


def night_step_broken(ctx: JobContext) -> dict[str, Any]:
    raise ValueError(f"no usable responses for candidate {ctx.params.get('candidate')}")
