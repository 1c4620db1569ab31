"""Night stages 5 to 7: gather finished shards, schedule the RSVP order, publish atomically.

Only finished shards go into the batch (complete sites only); the daily reference
set always does. If nothing at all could be made, the clean and reference images
still ship, and the night says why. A batch becomes visible to its rig in one
transaction, so a rig never sees a half-made batch; until then yesterday's stays.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import select

from jobs.context import JobContext
from jobs.registry import job
from models.allocation import RepeatPlan, plan_twin_repeats
from models.rsvp_schedule import ScheduleConfig, schedule_rsvp
from server.analysis.tables import AnalysisResult
from server.batches import service as batches
from server.batches.tables import Batch, BatchState
from server.images.service import clean_pool
from server.jobs.tables import Night
from server.lab.tables import Rig, Site
from server.recordings import service as recordings
from server.recordings.queries import presentation_counts, responses_by_image
from worker.night import ASSEMBLE, PUBLISH, SCHEDULE, SELECT, SYNTHESIZE
from worker.stages.data import images_by_id
from worker.stages.fit import night_config, night_result

log = logging.getLogger(__name__)


@job(ASSEMBLE, timeout_s=1800)
def assemble(ctx: JobContext) -> dict[str, Any]:
    """The batch's images with roles, and the clean/perturbed pairs to keep apart."""
    cfg = night_config(ctx)
    shards = ctx.results_of(SYNTHESIZE)
    select_result = night_result(ctx, SELECT)
    pairs: list[list[int]] = [p for s in shards for p in s.get("pairs", [])]
    skipped = sorted({sid for s in shards for sid in s.get("skipped_sites", [])})
    done_sites = sorted({sid for s in shards for sid in s.get("sites", [])})
    with ctx.session() as session:
        clean, reference = clean_pool(session)
        children = images_by_id(session, sorted({c for _, c in pairs}))
        roles: dict[int, str] = {im.id: "reference" for im in reference}
        for parent, _child in pairs:
            roles.setdefault(parent, "clean")
        for im in children:
            roles.setdefault(im.id, im.kind)  # a twin's role in the batch is its kind
        fresh: list[int] = []
        if not pairs:  # nothing synthesised: keep the lab recording the clean set
            for im in clean:
                roles.setdefault(im.id, "clean")
        elif cfg.fresh_clean:
            fresh = _fresh_clean(session, ctx.params["session_pk"], clean, set(roles), cfg.fresh_clean)
            for image_id in fresh:
                roles[image_id] = "clean"
    notes = []
    if fresh:
        notes.append(f"{len(fresh)} fresh clean image(s), least seen first")
    if skipped:
        notes.append(f"deadline: {len(skipped)} site(s) left out ({', '.join(skipped[:10])})")
    gated = select_result.get("gated") or {}
    if gated:
        notes.append(
            f"{len(gated)} site(s) gated: " + "; ".join(f"{k}: {v}" for k, v in list(gated.items())[:5])
        )
    if not pairs:
        notes.append("no perturbations were made; clean and reference images only")
    return {
        "roles": {str(k): v for k, v in roles.items()},
        "fresh": fresh,
        "pairs": pairs,
        "partial": bool(skipped),
        "sites": done_sites,
        "note": "; ".join(notes),
    }


def _fresh_clean(session: Any, session_pk: int, clean: list[Any], taken: set[int], k: int) -> list[int]:
    """Up to ``k`` of ``clean`` not already in the batch, those the subject has seen least first.

    The surrogates learn a site's tuning from the variety of images it has responded to, not from
    more repeats of the same ones (on the ``v1`` virtual brain, 576 different clean images on day 0
    instead of 192 nearly doubled day 1's found fraction; docs/choosing-perturbations.md), so every
    batch can carry new images beside the twins' parents. Ties (all never-shown images) are broken by
    content hash: any database picks the same images.
    """
    free = [im for im in clean if im.id not in taken]
    seen = presentation_counts(session, session_pk, [im.id for im in free])
    free.sort(key=lambda im: (seen.get(im.id, 0), im.sha256))
    return [im.id for im in free[:k]]


@job(SCHEDULE, timeout_s=1800)
def schedule(ctx: JobContext) -> dict[str, Any]:
    """RSVP order: repeats balanced per block, each clean image far from its perturbed twins."""
    cfg = night_config(ctx)
    a = night_result(ctx, ASSEMBLE)
    # Order by content, not by database id: two workers (or a re-run) insert rows in other orders.
    with ctx.session() as session:
        rows = images_by_id(session, [int(k) for k in a["roles"]])
        sha = {str(im.id): im.sha256 for im in rows}
        plan = _repeat_plan(session, rows, a["pairs"], cfg.repeats) if cfg.adaptive_repeats else None
    images = sorted(a["roles"], key=lambda k: (a["roles"][k], sha[k]))
    pairs = sorted(((str(p), str(c)) for p, c in a["pairs"]), key=lambda pc: (sha[pc[0]], sha[pc[1]]))
    sched = schedule_rsvp(
        images,
        pairs,
        ScheduleConfig(
            repeats=cfg.repeats,
            on_ms=cfg.on_ms,
            off_ms=cfg.off_ms,
            images_per_trial=cfg.images_per_trial,
            pair_separation_s=cfg.pair_separation_s,
            seed=cfg.seed,
        ),
        repeats_of=_repeats_of(plan, a.get("fresh", []), cfg.fresh_repeats),
    )
    ctx.progress(1.0, f"{len(sched.items)} presentations, twins {sched.mean_pair_separation_s:.0f} s apart")
    # No pairs (deadline, nothing synthesised) gives NaN separations; PostgreSQL's JSON refuses NaN.
    mean_sep, min_sep = (
        float(v) if math.isfinite(v) else None
        for v in (sched.mean_pair_separation_s, sched.min_pair_separation_s)
    )
    return {
        "sequence": [[it.seq, int(it.image), it.trial] for it in sched.items],
        "mean_pair_separation_s": mean_sep,
        "min_pair_separation_s": min_sep,
        "capped": sched.capped,
        "duration_s": sched.duration_s,
        "allocation": _allocation_reason(plan, a.get("fresh", []), cfg.fresh_repeats),
    }


def _repeats_of(
    plan: RepeatPlan | None, fresh: list[int], fresh_repeats: int | None
) -> dict[str, int] | None:
    """Images whose repeats differ from ``repeats``: the twins (adaptive) and the fresh clean images."""
    out = dict(plan.repeats) if plan else {}
    if fresh_repeats is not None:
        out.update({str(i): fresh_repeats for i in fresh})
    return out or None


def _allocation_reason(plan: RepeatPlan | None, fresh: list[int], fresh_repeats: int | None) -> str:
    reason = plan.reason if plan else "even repeats (adaptive_repeats is off)"
    if fresh and fresh_repeats is not None:
        reason += f"; {len(fresh)} fresh clean image(s) at {fresh_repeats} repeat(s) each"
    return reason


def _repeat_plan(session: Any, images: list[Any], pairs: list[list[int]], base: int) -> RepeatPlan:
    """Repeats per twin from the latest confidence interval of its site's estimate at its epsilon.

    The interval is the sign-corrected estimate's for IT, from the most recent analysed day
    (tonight's own analysis runs after publishing, so this is yesterday's evidence).
    """
    by_id = {im.id: im for im in images}
    pks = {by_id[c].site_pk for _, c in pairs if c in by_id and by_id[c].site_pk is not None}
    name = dict(session.execute(select(Site.id, Site.site_id).where(Site.id.in_(pks))).all())
    twins = [
        (str(c), name[by_id[c].site_pk], float(by_id[c].epsilon))
        for _, c in pairs
        if c in by_id and by_id[c].site_pk in name and by_id[c].epsilon is not None
    ]
    latest = (
        select(AnalysisResult.site_pk, AnalysisResult.epsilon, AnalysisResult.ci_low, AnalysisResult.ci_high)
        .where(
            AnalysisResult.source == "it",
            AnalysisResult.estimator == "sign_corrected",
            AnalysisResult.site_pk.in_(pks),
            AnalysisResult.epsilon.is_not(None),
            AnalysisResult.ci_low.is_not(None),
            AnalysisResult.ci_high.is_not(None),
        )
        .order_by(AnalysisResult.day, AnalysisResult.id)
    )
    # Later days overwrite earlier ones: each (site, epsilon) keeps its newest interval.
    widths = {(name[s], round(float(e), 9)): float(hi - lo) for s, e, lo, hi in session.execute(latest)}
    return plan_twin_repeats(twins, widths, base=base)


@job(PUBLISH, timeout_s=1800)
def publish(ctx: JobContext) -> dict[str, Any]:
    """Create and publish tomorrow's batch in one transaction (idempotent on retry)."""
    cfg = night_config(ctx)
    a = night_result(ctx, ASSEMBLE)
    s = night_result(ctx, SCHEDULE)
    sel = night_result(ctx, SELECT)
    night_id = ctx.params["night_id"]
    with ctx.session() as session:
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        if rec.rig_pk is None:
            raise ValueError(f"session {rec.session_id!r} has no rig; cannot address tomorrow's batch")
        rig = session.get_one(Rig, rec.rig_pk)
        batch_id = f"{rig.rig_id}-day{rec.day + 1}-night{night_id}"
        night = session.get_one(Night, night_id)
        existing = session.scalar(select(Batch).where(Batch.batch_id == batch_id))
        if existing is not None and existing.state == BatchState.published:
            return {"batch_id": batch_id, "already": True}
        roles = {int(k): v for k, v in a["roles"].items()}
        images = images_by_id(session, sorted(roles))
        note = a.get("note", "")
        sep = ""
        if s.get("mean_pair_separation_s") is not None:
            sep = f"twins {s['mean_pair_separation_s']:.0f} s apart on average"
        if sep and s.get("capped"):
            sep += f" (capped by the batch length; target {cfg.pair_separation_s:.0f} s)"
        batch = batches.create_batch(
            session=session,
            rig_id=rig.rig_id,
            batch_id=batch_id,
            day=rec.day + 1,
            model_version_id=sel.get("model_version_id"),
            images=[(im, roles[im.id]) for im in images],
            sequence=[
                {"seq": q, "image_id": i, "trial": t, "on_ms": cfg.on_ms, "off_ms": cfg.off_ms}
                for q, i, t in s["sequence"]
            ],
            notes="; ".join(x for x in (note, sep) if x),
        )
        batches.publish(session=session, batch=batch, store=ctx.store)
        night.batch_pk = batch.id
        night.partial = bool(a.get("partial"))
        night.note = "; ".join(x for x in (night.note, batch.notes) if x)
    log.info("published %s (%d images, %d presentations)", batch_id, len(images), len(s["sequence"]))
    return {
        "batch_id": batch_id,
        "images": len(images),
        "presentations": len(s["sequence"]),
        "partial": bool(a.get("partial")),
    }


__all__ = ["assemble", "publish", "responses_by_image", "schedule"]
