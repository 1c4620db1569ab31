"""Night stage 4: one synthesis shard (a few sites), stored as content-addressed PNGs with lineage.

Everything a shard makes is determined by the night's params, the chosen model and
the site ids: image choice and per-case seeds are derived from them, and the engine
runs in deterministic mode by default. A shard that a killed worker left unfinished
is re-run from scratch and makes the very same images, which the store deduplicates.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from itloop.night_params import NightConfig
from jobs.context import JobContext
from jobs.registry import job
from server.images import service as image_service
from server.images.tables import Direction
from worker.night import SYNTHESIZE
from worker.night_plan import record_throughput
from worker.steps.data import images_by_id, pixels, site_pks
from worker.steps.fit import load_encoder, night_config

log = logging.getLogger(__name__)


def site_seed(seed: int, site_id: str, salt: str = "") -> int:
    """A 31-bit seed from content only (site id and salt), so any database remakes the same images.

    31 bits because it is stored as the image's lineage seed (a 32-bit integer column).
    """
    return (int(seed) * 1_000_003 + zlib.crc32(f"{site_id}:{salt}".encode())) % (2**31)


def choose_images(n_pool: int, k: int, seed: int) -> list[int]:
    """``k`` distinct pool indices, reproducible from ``seed`` alone."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_pool, size=min(k, n_pool), replace=False).tolist())


def past_deadline(cfg: NightConfig) -> bool:
    if not cfg.deadline:
        return False
    deadline = datetime.fromisoformat(cfg.deadline)
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return datetime.now(UTC) >= deadline - timedelta(seconds=cfg.deadline_margin_s)


def _random_direction(clean: Any, eps: float, seed: int) -> Any:
    """A model-free perturbation: a random direction scaled to ``eps``, kept in the box and quantised."""
    import torch

    from models.synthesis import project_l2_ball_box, quantize_in_ball

    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    d = d / d.norm() * eps
    x = project_l2_ball_box((clean.double() + d)[None], clean.double()[None], float(eps))
    q, _ = quantize_in_ball(x.float(), clean[None].float(), torch.tensor([float(eps)]))
    return q[0]


@job(SYNTHESIZE, queue="itloop-gpu", timeout_s=4 * 3600, max_attempts=3)
def synthesize_shard(ctx: JobContext) -> dict[str, Any]:
    """Up/down, targeted and random-direction perturbations for the shard's sites."""
    import torch

    from models.synthesis import Case, SynthesisCancelled, SynthesisConfig, synthesize_targeted
    from models.synthesis.curve import synthesize_curve

    cfg = night_config(ctx)
    sites: list[str] = ctx.params["sites"]
    version: str = ctx.params["model_version"]
    if past_deadline(cfg):
        return {"sites": [], "skipped_sites": sites, "skipped": "deadline", "pairs": []}
    with ctx.session() as session:
        pool = images_by_id(session, ctx.params["clean_image_ids"])
        pks = site_pks(session, sites)
        from server.modeling import service as modeling
        from server.recordings import service as recordings

        # Random directions are drawn anew each day: with a fixed seed a night would remake
        # yesterday's images, and the content-addressed store would keep yesterday's lineage.
        day = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"]).day

        mv_id = modeling.get(session=session, version=version).id
    encoder, art = load_encoder(ctx, version)
    device = ctx.device()
    x_pool = pixels(ctx.store, pool)
    with torch.no_grad():
        f_pool = torch.cat([encoder(x_pool[i : i + 64].to(device)).cpu() for i in range(0, len(pool), 64)])

    # Per site: which clean images, which cases.
    cases: list[Case] = []
    targeted: list[tuple[str, int, float, torch.Tensor, str]] = []
    used: dict[int, int] = {}  # pool index -> row in the image tensor
    categories = [im.category for im in pool]

    def row(i: int) -> int:
        return used.setdefault(i, len(used))

    lo, hi = ctx.params.get("slots") or (0, cfg.clean_per_site)
    extras = bool(ctx.params.get("extras", True))  # targeted and random twins come with slot 0's shard
    search = (art.training.get("candidate") or {}).get("fit") == "pairs"
    for sid in sites:
        col = art.site_ids.index(sid)
        picks = choose_images(len(pool), cfg.clean_per_site, site_seed(cfg.seed, sid))[lo:hi]
        for i in picks:
            for eps in cfg.epsilons:
                for d in cfg.directions:
                    cases.append(
                        Case(
                            site=col,
                            image=row(i),
                            eps=float(eps),
                            direction=Direction(d).sign,
                            # The engine's own derived seeds are 63-bit: too wide for the lineage column.
                            seed=site_seed(cfg.seed, sid, f"guided:{i}:{eps}:{d}"),
                        )
                    )
        cats = sorted({c for c in categories if c})
        if extras and cfg.targeted_epsilons and cfg.targeted_per_site and len(cats) >= 2:
            means = {
                c: float(f_pool[[k for k, cc in enumerate(categories) if cc == c], col].mean()) for c in cats
            }
            preferred = max(means, key=means.__getitem__)
            pref_rows = [k for k, c in enumerate(categories) if c == preferred]
            direction = f_pool[pref_rows].mean(0) - f_pool.mean(0)
            others = [k for k, c in enumerate(categories) if c != preferred]
            chosen = choose_images(len(others), cfg.targeted_per_site, site_seed(cfg.seed, sid, "target"))
            for j in chosen:
                for eps in cfg.targeted_epsilons:
                    targeted.append((sid, row(others[j]), float(eps), direction, preferred))

    order = sorted(used, key=used.__getitem__)
    images = x_pool[order].to(device)
    synth_cfg = SynthesisConfig(
        restarts=cfg.restarts,
        budget=cfg.budget,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        channels_last=cfg.channels_last,
        keep_float=False,
    )
    total = len(cases) + len(targeted)

    def cancel() -> bool:
        ctx.check_cancelled()
        return past_deadline(cfg)

    try:
        # Each (site, image, direction)'s epsilon grid in one continuation run (models.synthesis.curve).
        t0 = time.perf_counter()
        result = synthesize_curve(
            encoder,
            images,
            cases,
            synth_cfg,
            progress=lambda done, _n: ctx.progress(0.8 * done / max(total, 1), "synthesis"),
            cancel=cancel,
        )
        name = (art.training.get("candidate") or {}).get("name", version)  # the planner's cache key
        record_throughput(ctx.settings, name, int(result.n_grad_evals.sum()), time.perf_counter() - t0)
        targeted_results = []
        for sid, r, eps, direction, preferred in targeted:
            tseed = site_seed(cfg.seed, sid, f"target:{order[r]}:{eps}")
            res = synthesize_targeted(
                encoder,
                images,
                direction.to(device),
                eps,
                replace(synth_cfg, seed=tseed),
                image_indices=[r],
                cancel=cancel,
            )
            targeted_results.append((sid, r, eps, preferred, res, tseed))
    except SynthesisCancelled:
        log.warning("shard %s stopped at the deadline; its sites are left out", sites)
        return {"sites": [], "skipped_sites": sites, "skipped": "deadline", "pairs": []}

    pairs: list[list[Any]] = []
    night = ctx.params["night_id"]
    flagged = _implausible(art, result)
    with ctx.session() as session:
        for k, case in enumerate(result.cases):
            sid = art.site_ids[case.site]
            parent = pool[order[case.image]]
            child = image_service.put_pixels(
                session=session,
                store=ctx.store,
                pixels=result.adv_uint8[k].numpy(),
                kind="perturbed",
                category=parent.category,
                parent_id=parent.id,
                model_version_id=mv_id,
                site_pk=pks[sid],
                epsilon=case.eps,
                direction=Direction.of_sign(case.direction),
                seed=int(result.seed[k]),
                predicted_change=float(result.predicted_change[k]),
                achieved_l2=float(result.delta_l2[k]),
                provenance={
                    "f_clean": float(result.f_clean[k]),
                    "f_adv": float(result.f_adv[k]),
                    "winning_restart": int(result.winning_restart[k]),
                    "n_grad_evals": int(result.n_grad_evals[k]),
                    "night": night,
                    "source": "search" if search else "surrogate",
                    "implausible_prediction": bool(flagged[k]),
                },
            )
            pairs.append([parent.id, child.id])
        for sid, r, eps, preferred, res, tseed in targeted_results:
            parent = pool[order[r]]
            col = art.site_ids.index(sid)
            child = image_service.put_pixels(
                session=session,
                store=ctx.store,
                pixels=res.adv_uint8[0].numpy(),
                kind="targeted",
                category=parent.category,
                parent_id=parent.id,
                model_version_id=mv_id,
                site_pk=pks[sid],
                epsilon=eps,
                direction=Direction.toward(preferred),
                seed=tseed,  # the base seed of this call; it reproduces the engine's derived seed
                predicted_change=float(res.out_adv[0, col] - res.out_clean[0, col]),
                achieved_l2=float(res.delta_l2[0]),
                provenance={
                    "target_score_clean": float(res.f_clean[0]),
                    "target_score": float(res.f_adv[0]),
                    "preferred_category": preferred,
                    "engine_seed": int(res.seed[0]),
                    "night": night,
                },
            )
            pairs.append([parent.id, child.id])
        for sid in sites:
            if not cfg.random_per_site or not extras:
                continue
            picks = choose_images(len(pool), cfg.random_per_site, site_seed(cfg.seed, sid, "random"))
            for i in picks:
                for eps in cfg.epsilons:
                    seed = site_seed(cfg.seed, sid, f"random:{day}:{i}:{eps}")
                    q = _random_direction(x_pool[i], float(eps), seed)
                    l2 = float((q.double() / 255 - x_pool[i].double()).norm())
                    with torch.no_grad():
                        f = encoder(torch.stack([x_pool[i], q.float() / 255]).to(device)).cpu()
                    col = art.site_ids.index(sid)
                    child = image_service.put_pixels(
                        session=session,
                        store=ctx.store,
                        pixels=q.numpy(),
                        kind="random",
                        category=pool[i].category,
                        parent_id=pool[i].id,
                        model_version_id=mv_id,
                        site_pk=pks[sid],
                        epsilon=float(eps),
                        direction="random",
                        seed=seed,
                        predicted_change=float(f[1, col] - f[0, col]),
                        achieved_l2=l2,
                        provenance={"night": night},
                    )
                    pairs.append([pool[i].id, child.id])
    n_flagged = int(flagged.sum())
    if n_flagged:
        log.warning(
            "%s: %d of %d twins predict responses beyond the sites' observed range",
            version,
            n_flagged,
            len(flagged),
        )
    ctx.progress(1.0, f"{len(pairs)} images for {len(sites)} sites")
    return {
        "sites": sites,
        "skipped_sites": [],
        "skipped": None,
        "pairs": pairs,
        "implausible_predictions": n_flagged,
        "source": "search" if search else version,
    }


def _implausible(art: Any, result: Any) -> np.ndarray:
    """Which twins' predicted responses lie far outside their site's observed range (see models.transfer)."""
    from models.transfer import implausible_predictions

    low, high = art.metrics.get("response_low"), art.metrics.get("response_high")
    if low is None or high is None or not len(result.cases):
        return np.zeros(len(result.cases), dtype=bool)
    cols = np.array([c.site for c in result.cases])
    f_adv = np.asarray(result.f_adv, dtype=np.float64)
    return implausible_predictions(f_adv, np.asarray(low)[cols], np.asarray(high)[cols])
