"""Night stage 4: one synthesis shard (a few sites), stored as content-addressed PNGs with lineage.

Everything a shard makes is determined by the night's params, the chosen model and
the site ids: image choice and per-case seeds are derived from them (models.cases), and the
engine runs in deterministic mode by default. A shard that a killed worker left unfinished
is re-run from scratch and makes the very same images, which the store deduplicates.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from itloop.night_params import NightConfig
from jobs.context import JobContext
from jobs.registry import job
from server.images import service as image_service
from worker.night import SYNTHESIZE
from worker.night_plan import record_throughput
from worker.stages.data import images_by_id, pixels, site_pks
from worker.stages.fit import night_config
from worker.stages.versions import load_encoder

log = logging.getLogger(__name__)

SKIPPED = {"sites": [], "skipped": "deadline", "pairs": []}


def past_deadline(cfg: NightConfig) -> bool:
    if not cfg.deadline:
        return False
    deadline = datetime.fromisoformat(cfg.deadline)
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return datetime.now(UTC) >= deadline - timedelta(seconds=cfg.deadline_margin_s)


def _cancelled(ctx: JobContext, cfg: NightConfig) -> bool:
    """Raise if the job was cancelled; True once the deadline is near (the engine then stops)."""
    ctx.check_cancelled()
    return past_deadline(cfg)


def _shard_spec(ctx: JobContext, cfg: NightConfig, day: int) -> Any:
    from models.cases import ShardSpec

    slots = ctx.params.get("slots")
    return ShardSpec(
        seed=cfg.seed,
        clean_per_site=cfg.clean_per_site,
        epsilons=cfg.epsilons,
        directions=cfg.directions,
        slots=(int(slots[0]), int(slots[1])) if slots else None,
        extras=bool(ctx.params.get("extras", True)),  # targeted and random twins come with slot 0's shard
        targeted_epsilons=cfg.targeted_epsilons,
        targeted_per_site=cfg.targeted_per_site,
        random_per_site=cfg.random_per_site,
        # Random directions are drawn anew each day: with a fixed seed a night would remake
        # yesterday's images, and the content-addressed store would keep yesterday's lineage.
        day=day,
    )


def _synthesis_config(cfg: NightConfig, device: Any) -> Any:
    """The engine's settings for this night on ``device`` (bf16 only where it pays: a GPU)."""
    import torch

    from models.synthesis import SynthesisConfig

    bf16 = cfg.precision == "bf16" and torch.device(device).type == "cuda"
    return SynthesisConfig(
        restarts=cfg.restarts,
        budget=cfg.budget,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        channels_last=cfg.channels_last,
        keep_float=False,
        autocast_dtype=torch.bfloat16 if bf16 else None,
    )


@job(SYNTHESIZE, queue="itloop-gpu", timeout_s=4 * 3600, max_attempts=3)
def synthesize_shard(ctx: JobContext) -> dict[str, Any]:
    """Up/down, targeted and random-direction perturbations for the shard's sites."""
    from models.synthesis import SynthesisCancelled
    from models.twins import make_twins
    from server.modeling import service as modeling
    from server.recordings import service as recordings

    cfg = night_config(ctx)
    sites: list[str] = ctx.params["sites"]
    version: str = ctx.params["model_version"]
    if past_deadline(cfg):
        return {**SKIPPED, "skipped_sites": sites}
    with ctx.session() as session:
        pool = images_by_id(session, ctx.params["clean_image_ids"])
        pks = site_pks(session, sites)
        day = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"]).day
        mv_id = modeling.get(session=session, version=version).id
    encoder, art = load_encoder(ctx, version)
    device = ctx.device()
    search = (art.training.get("candidate") or {}).get("fit") == "pairs"
    low, high = art.metrics.get("response_low"), art.metrics.get("response_high")
    try:
        made = make_twins(
            encoder,
            art.site_ids,
            pixels(ctx.store, pool),
            [im.category for im in pool],
            sites,
            _shard_spec(ctx, cfg, day),
            _synthesis_config(cfg, device),
            device=device,
            response_range=None if low is None or high is None else (low, high),
            provenance={"source": "search" if search else "surrogate"},
            progress=lambda f: ctx.progress(0.8 * f, "synthesis"),
            cancel=lambda: _cancelled(ctx, cfg),
        )
    except SynthesisCancelled:
        log.warning("shard %s stopped at the deadline; its sites are left out", sites)
        return {**SKIPPED, "skipped_sites": sites}
    with ctx.session() as session:
        pairs = [
            store_twin(
                ctx, session, twin, pool[twin.pool_index], model_version_id=mv_id, site_pk=pks[twin.site_id]
            )
            for twin in made.twins
        ]
    name = (art.training.get("candidate") or {}).get("name", version)  # the planner's cache key
    record_throughput(ctx.settings, name, made.guided_grad_evals, made.guided_seconds)
    if made.n_implausible:
        log.warning("%s: %d of %d twins predict responses beyond the sites' observed range", version,
                    made.n_implausible, made.n_guided)  # fmt: skip
    ctx.progress(1.0, f"{len(pairs)} images for {len(sites)} sites")
    return {
        "sites": sites,
        "skipped_sites": [],
        "skipped": None,
        "pairs": pairs,
        "implausible_predictions": made.n_implausible,
        "source": "search" if search else version,
    }


def store_twin(
    ctx: JobContext, session: Any, twin: Any, parent: Any, *, model_version_id: int, site_pk: int
) -> list[int]:
    """The one image writer: a twin as a content-addressed PNG with its lineage; returns [parent, child]."""
    child = image_service.put_pixels(
        session=session,
        store=ctx.store,
        pixels=twin.pixels,
        kind=twin.kind,
        category=parent.category,
        parent_id=parent.id,
        model_version_id=model_version_id,
        site_pk=site_pk,
        epsilon=twin.epsilon,
        direction=twin.direction,
        seed=twin.seed,
        predicted_change=twin.predicted_change,
        achieved_l2=twin.achieved_l2,
        provenance={**twin.provenance, "night": ctx.params["night_id"]},
    )
    return [parent.id, child.id]
