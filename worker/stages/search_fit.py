"""Night stage 2, the across-day search: every site's gradient estimated from measured twin pairs.

Fitted like a candidate (a linear model in full-resolution pixels) by :mod:`models.search`, and
stored as an ordinary model version, so synthesis, lineage and analysis treat it like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from itloop.night_params import NightConfig
from jobs.context import JobContext
from models.transfer import site_transfer
from server.modeling import service as modeling
from worker.stages.data import pixels
from worker.stages.night_data import NightData, twin_pairs
from worker.stages.versions import nanmedian_or_none, refit_result, store_artifact, transfer_fields


def refit_search(
    ctx: JobContext,
    cfg: NightConfig,
    cand: Any,
    version: str,
    data: NightData,
    images: list[Any],
) -> dict[str, Any]:
    """The across-day search's model: every site's gradient estimated from measured twin pairs."""
    from models.search import PairDifferenceRidge

    pairs = twin_pairs(images)
    if len(pairs) < cfg.min_transfer_pairs:
        needs = f"{len(pairs)} twin pair(s) on record; the search needs {cfg.min_transfer_pairs}"
        return refit_result(None, None, cand.name, skipped=needs)
    pc, cc = (np.array(x) for x in zip(*pairs, strict=True))
    flat = pixels(ctx.store, images).numpy().astype(np.float64)
    size = flat.shape[-1]
    flat = flat.reshape(len(flat), -1)
    observed = data.mean[cc] - data.mean[pc]
    ctx.progress(0.3, f"search: {len(pairs)} pairs x {flat.shape[1]} pixels")
    model = PairDifferenceRidge().fit(flat[cc] - flat[pc], observed)
    site_tr = site_transfer(model.loo_pred_, observed)
    metrics = {
        "pair_parent_id": np.array([images[i].id for i in pc]),
        "pair_child_id": np.array([images[i].id for i in cc]),
        "pair_pred_change": model.loo_pred_,
        "pair_obs_change": observed,
        "pair_l2": np.linalg.norm(flat[cc] - flat[pc], axis=1),
    }
    artifact = _artifact(ctx, cand, data, model, flat, size, metrics)
    key = store_artifact(ctx, version, artifact)
    median_r = nanmedian_or_none(site_tr.r)
    with ctx.session() as session:
        mv = modeling.record_model_version(
            session=session,
            version=version,
            candidate=cand.name,
            backbone=cand.backbone,
            checkpoint_sha256=None,
            layer=cand.layer,
            pool=cand.pool,
            artifact_key=key,
            trained_on={"night": ctx.params["night_id"], "sessions": data.sessions, "n_pairs": len(pairs)},
            metrics={"transfer_score": median_r, "n_transfer_pairs": len(pairs)},
            score=None,
            site_metrics=[
                {"site_id": sid, "alpha": float(model.alpha_[i]), **transfer_fields(site_tr, i)}
                for i, sid in enumerate(data.site_ids)
            ],
        )
        mv_id = mv.id
    ctx.progress(1.0, f"{version}: {len(pairs)} pairs, median held-out transfer r {median_r}")
    return refit_result(version, mv_id, cand.name, score=None, transfer_score=median_r)


def _artifact(
    ctx: JobContext,
    cand: Any,
    data: NightData,
    model: Any,
    flat: np.ndarray,
    size: int,
    pairs: dict[str, Any],
) -> Any:
    """The search as an ordinary artifact: a linear model in pixels (offset to the sites' mean response)."""
    from models.artifacts import ModelArtifact

    # The offset makes the linear model's mean prediction match the mean response, so predicted
    # responses (and the implausibility check) are on the site's own scale.
    intercept = np.nanmean(data.mean, axis=0) - flat.mean(axis=0) @ model.coef_
    n_pixels, n_sites = model.coef_.shape
    return ModelArtifact(
        backbone=cand.backbone,
        checkpoint_sha256=None,
        backbone_kwargs={"size": size},
        layer=cand.layer,
        pool=cand.pool,
        site_ids=list(data.site_ids),
        coef=model.coef_,
        intercept=intercept,
        alpha=model.alpha_,
        x_mean=np.zeros(n_pixels),
        x_scale=np.ones(n_pixels),
        metrics={
            "r_ceiled": np.full(n_sites, np.nan),
            "response_low": np.nanmin(data.mean, axis=0),
            "response_high": np.nanmax(data.mean, axis=0),
            **pairs,
        },
        training={
            "sessions": data.sessions,
            "night": ctx.params["night_id"],
            "window_ms": list(data.window_ms),
            "n_pairs": int(len(pairs["pair_child_id"])),
            "candidate": {"name": cand.name, "backbone": cand.backbone, "fit": cand.fit},
        },
    )
