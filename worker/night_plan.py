"""The night's plan before it starts: expected synthesis time against the deadline.

Joins the database (how many sites, the night's params), the throughput cache in the data
directory (gradient evaluations per second measured per candidate model and device by every
synthesis shard) and the pure planner (:mod:`models.night_planner`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from models.night_planner import NightPlan, NightWork, merge_throughput, plan_synthesis
from server.lab.tables import Array, Site
from server.recordings.tables import RecordingSession

log = logging.getLogger(__name__)

#: The throughput cache, in the data directory: {"<candidate>@<device>": {"evals_per_s", "shards"}}.
CACHE_NAME = "synthesis-throughput.json"


def cache_key(candidate: str, device: str) -> str:
    return f"{candidate}@{device}"


def load_throughput(settings: Settings) -> dict[str, dict[str, float]]:
    """The cache, or empty when missing or unreadable (planning then assumes the default rate)."""
    path = Path(settings.data_dir) / CACHE_NAME
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_throughput(settings: Settings, candidate: str, evals: int, seconds: float) -> None:
    """Fold one shard's measurement into the cache (atomic replace; a failure only logs)."""
    if evals <= 0 or seconds <= 0:
        return
    path = Path(settings.data_dir) / CACHE_NAME
    try:
        cache = load_throughput(settings)
        key = cache_key(candidate, str(settings.device))
        cache[key] = merge_throughput(cache.get(key), evals, seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".throughput-")
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        log.warning("could not update the synthesis throughput cache %s", path, exc_info=True)


def last_night_rate(session: Session, recent: int = 5) -> float | None:
    """Planned gradient evaluations per second of actual synthesis in the latest finished night.

    The span from its first synthesis shard's start to its last one's end covers everything a
    shard does (loading, targeted and random twins, storing) and the night's real mix of
    sources and workers, so a night like the last one is predicted by its own history; the
    per-model cache only serves a lab's first nights.
    """
    from server.jobs.tables import Job, Night

    nights = session.scalars(
        select(Night).where(Night.finished_at.is_not(None)).order_by(Night.id.desc()).limit(recent)
    )
    for night in nights:
        expected = (night.params or {}).get("expected") or {}
        shards = list(
            session.scalars(select(Job).where(Job.night_id == night.id, Job.kind == "night.synthesize"))
        )
        ends = [j.finished_at for j in shards if j.finished_at is not None]
        starts = [j.started_at for j in shards if j.started_at is not None]
        if not expected.get("evals") or not shards or len(ends) < len(shards) or len(starts) < len(shards):
            continue
        span = (max(ends) - min(starts)).total_seconds()
        if span > 0:
            return float(expected["evals"]) / span
    return None


def _candidate_names(cfg: Any) -> list[str]:
    from jobs.config import get_worker_config

    specs = cfg.candidates or get_worker_config().night_candidates
    return [s if isinstance(s, str) else str(s.get("name", "")) for s in specs]


def plan_night(
    session: Session, settings: Settings, rec: RecordingSession, params: dict[str, Any]
) -> NightPlan:
    """The synthesis plan of a night about to start (raises ``NightDoesNotFit``).

    Every active site of the session's subject counts (the night's choice may gate some).  The
    rate is the latest finished night's (:func:`last_night_rate`), else from the per-model
    cache: the slowest candidate's, or the sum over candidates when the ensemble may be chosen
    (it runs every candidate per step), so a first night's estimate errs on the long side.
    """
    from itloop.night_params import NightConfig

    cfg = NightConfig.from_params(params, settings.night_defaults)
    n_sites = session.scalar(
        select(func.count(Site.id))
        .join(Array, Site.array_id == Array.id)
        .where(Array.subject_id == rec.subject_id, Site.active.is_(True))
    )
    rate, source = last_night_rate(session), "last night"
    if rate is None:
        cache = load_throughput(settings)
        names = _candidate_names(cfg)
        rates = [cache.get(cache_key(n, str(settings.device)), {}).get("evals_per_s") for n in names]
        known = [r for r in rates if r]
        source = "measured"
        if known and len(known) == len(rates):
            rate = 1.0 / sum(1.0 / r for r in known) if cfg.ensemble and len(known) > 1 else min(known)
    work = NightWork(
        n_sites=int(n_sites or 0),
        clean_per_site=cfg.clean_per_site,
        n_epsilons=len(cfg.epsilons),
        n_directions=len(cfg.directions),
        n_targeted=cfg.targeted_per_site * len(cfg.targeted_epsilons),
        restarts=cfg.restarts,
        budget=cfg.budget or cfg.restarts * 20,
    )
    available = None
    if params.get("deadline"):
        try:
            deadline = datetime.fromisoformat(str(params["deadline"]))
        except ValueError:
            from itloop.errors import InvalidInput

            raise InvalidInput(
                f"night params: deadline {params['deadline']!r} is not an ISO 8601 time"
            ) from None
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        available = (deadline - datetime.now(UTC)).total_seconds() - cfg.deadline_margin_s
    plan = plan_synthesis(work, rate, available)
    return replace(plan, throughput_source=source) if rate else plan


def apply_plan(
    session: Session, settings: Settings, rec: RecordingSession, params: dict[str, Any], *, refuse_late: bool
) -> dict[str, Any]:
    """The night's params with the plan applied and its expectation recorded under ``expected``.

    Under a deadline the planner's budget replaces a larger one (or the default) and its shard
    size is used unless one was given.  A night that cannot fit even at the smallest budget is
    refused (``refuse_late``: 409 at ``POST /nights``, with both times) or, when it starts on
    its own at session completion, started anyway: it then publishes what is done by the
    deadline.
    """
    from itloop.errors import Conflict
    from models.night_planner import NightDoesNotFit

    out = dict(params)
    try:
        plan = plan_night(session, settings, rec, params)
    except NightDoesNotFit as exc:
        if refuse_late:
            raise Conflict(f"the night cannot finish before its deadline: {exc}") from None
        log.warning("night for %s starts although it cannot fit: %s", rec.session_id, exc)
        out["expected"] = {"fits": False, "expected_s": exc.expected_s, "available_s": exc.available_s}
        return out
    if plan.available_s is not None:
        asked = params.get("budget")
        if asked is None or int(asked) > plan.budget:
            out["budget"] = plan.budget
        out.setdefault("sites_per_shard", plan.sites_per_shard)
    out["expected"] = plan.as_dict()
    log.info(
        "night for %s: synthesis expected to take %.0f s (budget %d, %s rate %.1f evals/s); %s s available",
        rec.session_id,
        plan.expected_s,
        plan.budget,
        plan.throughput_source,
        plan.evals_per_s,
        "unlimited" if plan.available_s is None else f"{plan.available_s:.0f}",
    )
    return out
