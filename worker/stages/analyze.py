"""Night stage 8: the day's sensitivity analysis, for IT and for the night's models.

IT pairs are those shown today whose clean parent was also shown today. The sign
correction uses the predictions of the model that made each perturbation. Each
candidate model of tonight is also attacked on today's clean images at today's
epsilons, so IT and models are compared on the same images (DESIGN.md section 1).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import select

from jobs.context import JobContext
from jobs.registry import job
from server.analysis import service as analysis
from server.lab.tables import Site
from server.modeling.tables import ModelVersion
from server.recordings import service as recordings
from worker.night import ANALYZE, SELECT
from worker.stages.analyze_to_date import to_date_records
from worker.stages.data import images_by_id, pixels
from worker.stages.fit import load_night_data, night_config
from worker.stages.versions import load_encoder

log = logging.getLogger(__name__)

PAIR_KINDS = ("perturbed", "random")


def _model_sensitivity(
    ctx: JobContext, versions: list[str], x_clean: Any, site_ids: list[str], epsilons: list[float]
) -> list[Any]:
    """Each night model attacked on today's clean images: its own sensitivity per epsilon."""
    from models.model_sensitivity import model_own_sensitivity

    cfg = night_config(ctx)

    def cancel() -> bool:
        ctx.check_cancelled()
        return False

    out = []
    for i, version in enumerate(versions):
        encoder, art = load_encoder(ctx, version)
        out += model_own_sensitivity(
            encoder,
            version,
            art.site_ids,
            x_clean,
            site_ids,
            epsilons,
            seed=cfg.seed,
            images_per_site=cfg.model_sensitivity_images,
            budget=cfg.model_sensitivity_budget,
            device=ctx.device(),
            cancel=cancel,
        )
        ctx.progress(0.3 + 0.5 * (i + 1) / len(versions), f"model sensitivity of {version}")
    return out


def _paired(
    eps: float,
    rows: list[tuple[int, int, Any]],
    site_ids: list[str],
    site_of_pk: dict[int, str],
    padded: np.ndarray,
    preds: dict[int, np.ndarray],
) -> Any:
    """IT pairs of one epsilon, each with the generating model's predictions, for analyze_day."""
    from models.sensitivity import PairedResponses

    col_of = {sid: i for i, sid in enumerate(site_ids)}
    owner_col = [col_of.get(site_of_pk.get(im.site_pk, ""), -1) for _, _, im in rows]
    rows = [r for r, col in zip(rows, owner_col, strict=True) if col >= 0]
    pr = np.array([p for p, _, _ in rows], dtype=np.int64)
    cr = np.array([c for _, c, _ in rows], dtype=np.int64)
    owner = np.array([col for col in owner_col if col >= 0], dtype=np.int64)
    nan2 = np.full((len(site_ids), 2), np.nan)
    pred = np.stack(
        [
            preds[im.model_version_id][:, [p, c]] if im.model_version_id in preds else nan2
            for p, c, im in rows
        ],
        axis=1,
    )  # (n_sites, n_pairs, 2)
    return PairedResponses.from_all_sites(
        epsilon=eps,
        site_ids=site_ids,
        clean=padded[pr].transpose(1, 0, 2),
        perturbed=padded[cr].transpose(1, 0, 2),
        pred_clean=pred[:, :, 0],
        pred_perturbed=pred[:, :, 1],
        pair_site=owner,
        random_direction=np.array([im.kind == "random" for _, _, im in rows]),
    )


def _generating_predictions(
    ctx: JobContext, pair_rows: list[Any], x_all: Any, version_of: dict[int, str], site_ids: list[str]
) -> dict[int, np.ndarray]:
    """Each generating model's predictions (sites x today's images), by model version id."""
    from models.encoder import predict_batched
    from models.model_sensitivity import align_sites

    preds = {}
    for mv_id in sorted({im.model_version_id for _, _, im in pair_rows if im.model_version_id}):
        encoder, art = load_encoder(ctx, version_of[mv_id])
        preds[mv_id] = align_sites(
            predict_batched(encoder, x_all, ctx.device()).numpy(), art.site_ids, site_ids
        )
    return preds


def _load(ctx: JobContext) -> tuple[Any, list[Any], list[str], dict[int, str], dict[int, str], int]:
    """Today's trials (the night's shared data), their images, the night's models and the lookups."""
    data, _ = load_night_data(ctx, with_images=False)  # today's images are loaded below
    with ctx.session() as session:
        images = images_by_id(session, [int(i) for i in data.today_image_ids])
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
        version_of = {
            int(i): str(v) for i, v in session.execute(select(ModelVersion.id, ModelVersion.version))
        }
        site_of_pk = {int(i): str(s) for i, s in session.execute(select(Site.id, Site.site_id))}
        day = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"]).day
    return data, images, night_versions, version_of, site_of_pk, day


def _store(ctx: JobContext, result: Any, window_ms: tuple[float, float], day: int) -> int:
    """Store the day's figures, then IT's sensitivity to date (every day's twins pooled)."""
    cfg = night_config(ctx)
    records = [
        {**r, "source": f"model:{r['model']}" if r.get("model") else "it"} for r in result.to_records()
    ]
    with ctx.session() as session:
        n = analysis.store_results(
            session=session, records=records, session_pk=ctx.params["session_pk"], day=day
        )
    ctx.progress(0.9, "sensitivity to date (all days pooled)")
    with ctx.session() as session:
        pooled = to_date_records(
            session, day=day, window_ms=window_ms, train_days=cfg.train_days, n_boot=cfg.n_boot, seed=cfg.seed
        )
        if pooled:
            n += analysis.store_results(
                session=session, records=pooled, session_pk=ctx.params["session_pk"], day=day
            )
    return n


@job(ANALYZE, queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)  # attacks each model
def analyze(ctx: JobContext) -> dict[str, Any]:
    """Every sensitivity figure of the day, stored per site, epsilon, day and estimator."""
    from models.sensitivity import CleanResponses, analyze_day

    cfg = night_config(ctx)
    data, images, night_versions, version_of, site_of_pk, day = _load(ctx)
    site_ids, padded = list(data.site_ids), data.today_trials  # (n_images, n_sites, reps)
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
    preds = {} if x_all is None else _generating_predictions(ctx, pair_rows, x_all, version_of, site_ids)
    ctx.progress(0.3, f"{len(pair_rows)} pairs, {len(clean_rows)} clean images")
    pairs = [
        _paired(
            eps,
            [r for r in pair_rows if round(float(r[2].epsilon), 9) == eps],
            site_ids,
            site_of_pk,
            padded,
            preds,
        )
        for eps in sorted({round(float(im.epsilon), 9) for _, _, im in pair_rows})
    ]
    epsilons = [p.epsilon for p in pairs] or list(cfg.epsilons)
    models = []
    if x_all is not None and clean_rows and pair_rows:  # models are compared where IT was measured
        models = _model_sensitivity(ctx, night_versions, x_all[clean_rows], site_ids, epsilons)
    result = analyze_day(clean, pairs, models, day=day, n_boot=cfg.n_boot, rng=cfg.seed)
    n = _store(ctx, result, data.window_ms, day)
    comparison = result.comparisons.get("sign_corrected")
    summary: dict[str, Any] = {"records": n, "epsilons": epsilons, "pairs": len(pair_rows), "day": day}
    if comparison is not None:
        summary["closest_model"] = comparison.closest
    return summary


__all__ = ["SELECT", "analyze"]
