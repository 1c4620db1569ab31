"""Night stage 8: the day's sensitivity analysis, for IT and for the night's models.

IT pairs are those shown today whose clean parent was also shown today. The sign
correction uses the predictions of the model that made each perturbation. Each
candidate model of tonight is also attacked on today's clean images at today's
epsilons, so IT and models are compared on the same images (DESIGN.md section 1).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import select

from server.analysis import service as analysis
from server.lab.tables import Site
from server.modeling.tables import ModelVersion
from server.recordings import service as recordings
from server.recordings.queries import responses_by_image
from worker.context import JobContext
from worker.night import ANALYZE, SELECT
from worker.registry import job
from worker.steps.analyze_to_date import to_date_records
from worker.steps.data import images_by_id, pixels
from worker.steps.fit import load_encoder, night_config
from worker.steps.synth import choose_images, site_seed

log = logging.getLogger(__name__)

PAIR_KINDS = ("perturbed", "random")


def _predict(encoder: Any, x: Any, device: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([encoder(x[i : i + 64].to(device)).cpu() for i in range(0, len(x), 64)]).numpy()


def _align(values: np.ndarray, model_sites: list[str], site_ids: list[str]) -> np.ndarray:
    """(n_items, n_model_sites) -> (n_sites, n_items) in ``site_ids`` order, NaN where absent."""
    out = np.full((len(site_ids), values.shape[0]), np.nan)
    for i, sid in enumerate(site_ids):
        if sid in model_sites:
            out[i] = values[:, model_sites.index(sid)]
    return out


def model_own_sensitivity(
    ctx: JobContext,
    version: str,
    clean_rows: list[int],
    x_clean: Any,
    site_ids: list[str],
    epsilons: list[float],
) -> list[Any]:
    """Attack ``version`` itself on today's clean images: its f-based sensitivity per epsilon."""
    from models.sensitivity import ModelPredictions
    from models.synthesis import Case, SynthesisConfig, synthesize

    cfg = night_config(ctx)
    encoder, art = load_encoder(ctx, version)
    device = ctx.device()
    f_clean = _predict(encoder, x_clean, device)  # (n_clean, n_model_sites)
    k = cfg.model_sensitivity_images
    sites = [s for s in site_ids if s in art.site_ids]
    out = []
    for eps in epsilons:
        cases, owner = [], []
        for sid in sites:
            for i in choose_images(len(clean_rows), k, site_seed(cfg.seed, sid, "model-sens")):
                for d in (1, -1):
                    cases.append(Case(site=art.site_ids.index(sid), image=i, eps=float(eps), direction=d))
                    owner.append(sid)
        if not cases:
            continue
        res = synthesize(
            encoder,
            x_clean.to(device),
            cases,
            SynthesisConfig(
                restarts=4,
                budget=cfg.model_sensitivity_budget,
                seed=cfg.seed,
                deterministic=False,  # never shipped: batched mode is faster
                keep_float=False,
            ),
            cancel=lambda: (ctx.check_cancelled(), False)[1],
        )
        per_site: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for sid, fc, fa in zip(owner, res.f_clean.tolist(), res.f_adv.tolist(), strict=True):
            per_site[sid].append((fc, fa))
        width = max(len(v) for v in per_site.values())
        pc = np.full((len(site_ids), width), np.nan)
        pp = np.full((len(site_ids), width), np.nan)
        for sid, vals in per_site.items():
            i = site_ids.index(sid)
            pc[i, : len(vals)] = [v[0] for v in vals]
            pp[i, : len(vals)] = [v[1] for v in vals]
        out.append(
            ModelPredictions(
                name=version,
                epsilon=float(eps),
                site_ids=tuple(site_ids),
                clean=_align(f_clean, art.site_ids, site_ids),
                pred_clean=pc,
                pred_perturbed=pp,
            )
        )
    return out


@job(ANALYZE, queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)  # attacks each model
def analyze(ctx: JobContext) -> dict[str, Any]:
    """Every sensitivity figure of the day, stored per site, epsilon, day and estimator."""
    from models.sensitivity import CleanResponses, PairedResponses, analyze_day

    cfg = night_config(ctx)
    with ctx.session() as session:
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        window = cfg.window_ms or recordings.default_window()
        table = responses_by_image(session=session, session_pk=rec.id, window_ms=window)
        images = images_by_id(session, table.image_ids)
        night_versions = list(
            session.scalars(
                select(ModelVersion.version)
                .where(
                    ModelVersion.version.like(f"night{ctx.params['night_id']}-%"),
                    # an ensemble's own sensitivity costs all its members' attacks again
                    ModelVersion.candidate != "ensemble",
                )
                .order_by(ModelVersion.id)
            )
        )
        version_of = dict(session.execute(select(ModelVersion.id, ModelVersion.version)).all())
        site_pk_to_id = dict(session.execute(select(Site.id, Site.site_id)).all())
        day = rec.day
    site_ids = list(table.site_ids)
    padded = table.padded()  # (n_images, n_sites, reps)
    row_of = {im.id: k for k, im in enumerate(images)}
    clean_rows = [k for k, im in enumerate(images) if im.kind not in (*PAIR_KINDS, "targeted")]
    clean = CleanResponses(site_ids=tuple(site_ids), trials=padded[clean_rows].transpose(1, 0, 2))

    # IT pairs shown today, grouped by epsilon, with the generating model's predictions.
    pair_rows = [
        (row_of[im.parent_id], k, im)
        for k, im in enumerate(images)
        if im.kind in PAIR_KINDS and im.parent_id in row_of and im.epsilon is not None
    ]
    x_all = pixels(ctx.store, images) if pair_rows or night_versions else None
    preds: dict[int, np.ndarray] = {}
    for mv_id in sorted({im.model_version_id for _, _, im in pair_rows if im.model_version_id}):
        encoder, art = load_encoder(ctx, version_of[mv_id])
        preds[mv_id] = _align(_predict(encoder, x_all, ctx.device()), art.site_ids, site_ids)
    ctx.progress(0.3, f"{len(pair_rows)} pairs, {len(clean_rows)} clean images")
    pairs = []
    for eps in sorted({round(float(im.epsilon), 9) for _, _, im in pair_rows}):
        rows = [(p, c, im) for p, c, im in pair_rows if round(float(im.epsilon), 9) == eps]
        pr = np.array([p for p, _, _ in rows])
        cr = np.array([c for _, c, _ in rows])
        owner = np.array(
            [
                site_ids.index(site_pk_to_id[im.site_pk])
                if im.site_pk in site_pk_to_id and site_pk_to_id[im.site_pk] in site_ids
                else -1
                for _, _, im in rows
            ]
        )
        keep = owner >= 0
        pr, cr, owner = pr[keep], cr[keep], owner[keep]
        kinds = [im.kind for (_, _, im), k in zip(rows, keep, strict=True) if k]
        mvs = [im.model_version_id for (_, _, im), k in zip(rows, keep, strict=True) if k]
        pred = np.stack(
            [
                preds[m][:, [p, c]] if m in preds else np.full((len(site_ids), 2), np.nan)
                for m, p, c in zip(mvs, pr, cr, strict=True)
            ],
            axis=1,
        )  # (n_sites, n_pairs, 2)
        pairs.append(
            PairedResponses.from_all_sites(
                epsilon=eps,
                site_ids=site_ids,
                clean=padded[pr].transpose(1, 0, 2),
                perturbed=padded[cr].transpose(1, 0, 2),
                pred_clean=pred[:, :, 0],
                pred_perturbed=pred[:, :, 1],
                pair_site=owner,
                random_direction=np.array([k == "random" for k in kinds]),
            )
        )
    epsilons = [p.epsilon for p in pairs] or list(cfg.epsilons)
    models = []
    if x_all is not None and clean_rows and pair_rows:  # models are compared where IT was measured
        for i, version in enumerate(night_versions):
            models += model_own_sensitivity(ctx, version, clean_rows, x_all[clean_rows], site_ids, epsilons)
            ctx.progress(0.3 + 0.5 * (i + 1) / len(night_versions), f"model sensitivity of {version}")
    result = analyze_day(clean, pairs, models, day=day, n_boot=cfg.n_boot, rng=cfg.seed)
    records = result.to_records()
    for r in records:
        r["source"] = f"model:{r['model']}" if r.get("model") else "it"
    with ctx.session() as session:
        n = analysis.store_results(
            session=session, records=records, session_pk=ctx.params["session_pk"], day=day
        )
    ctx.progress(0.9, "sensitivity to date (all days pooled)")
    with ctx.session() as session:
        pooled = to_date_records(
            session, day=day, window_ms=window, train_days=cfg.train_days, n_boot=cfg.n_boot, seed=cfg.seed
        )
        if pooled:
            n += analysis.store_results(
                session=session, records=pooled, session_pk=ctx.params["session_pk"], day=day
            )
    comparison = result.comparisons.get("sign_corrected")
    summary: dict[str, Any] = {"records": n, "epsilons": epsilons, "pairs": len(pair_rows), "day": day}
    if comparison is not None:
        summary["closest_model"] = comparison.closest
    return summary


__all__ = ["SELECT", "analyze"]
