"""Night stage 2, the across-day search: every site's gradient estimated from measured twin pairs.

Fitted like a candidate (a linear model in full-resolution pixels) by :mod:`models.search`, and
stored as an ordinary model version, so synthesis, lineage and analysis treat it like any other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from itloop.night_params import NightConfig
from jobs.context import JobContext
from models.transfer import site_transfer
from server.modeling import service as modeling
from worker.steps.data import pixels
from worker.steps.fit import nanmedian_or_none, transfer_fields


def refit_search(
    ctx: JobContext,
    cfg: NightConfig,
    cand: Any,
    version: str,
    ts: Any,
    parents: dict[int, int | None],
    window: Any,
) -> dict[str, Any]:
    """The across-day search's model: every site's gradient estimated from measured twin pairs."""
    from models.artifacts import ModelArtifact
    from models.search import PairDifferenceRidge

    row_of = {im.id: k for k, im in enumerate(ts.images)}
    pairs = sorted((row_of[p], row_of[c]) for c, p in parents.items() if p is not None and p in row_of)
    if len(pairs) < cfg.min_transfer_pairs:
        return {
            "model_version": None,
            "candidate": cand.name,
            "skipped": f"{len(pairs)} twin pair(s) on record; the search needs {cfg.min_transfer_pairs}",
        }
    pc, cc = (np.array(x) for x in zip(*pairs, strict=True))
    x = pixels(ctx.store, ts.images).numpy().astype(np.float64)
    size = x.shape[-1]
    flat = x.reshape(len(x), -1)
    observed = ts.mean[cc] - ts.mean[pc]
    ctx.progress(0.3, f"search: {len(pairs)} pairs x {flat.shape[1]} pixels")
    model = PairDifferenceRidge().fit(flat[cc] - flat[pc], observed)
    site_tr = site_transfer(model.loo_pred_, observed)
    # The offset makes the linear model's mean prediction match the mean response, so predicted
    # responses (and the implausibility check) are on the site's own scale.
    intercept = np.nanmean(ts.mean, axis=0) - flat.mean(axis=0) @ model.coef_
    n_pixels, n_sites = model.coef_.shape
    nan_sites = np.full(n_sites, np.nan)
    artifact = ModelArtifact(
        backbone=cand.backbone,
        checkpoint_sha256=None,
        backbone_kwargs={"size": size},
        layer=cand.layer,
        pool=cand.pool,
        site_ids=list(ts.site_ids),
        coef=model.coef_,
        intercept=intercept,
        alpha=model.alpha_,
        x_mean=np.zeros(n_pixels),
        x_scale=np.ones(n_pixels),
        metrics={
            "r_ceiled": nan_sites,
            "response_low": np.nanmin(ts.mean, axis=0),
            "response_high": np.nanmax(ts.mean, axis=0),
            "pair_parent_id": np.array([ts.images[i].id for i in pc]),
            "pair_child_id": np.array([ts.images[i].id for i in cc]),
            "pair_pred_change": model.loo_pred_,
            "pair_obs_change": observed,
            "pair_l2": np.linalg.norm(flat[cc] - flat[pc], axis=1),
        },
        training={
            "sessions": ts.sessions,
            "night": ctx.params["night_id"],
            "window_ms": list(window),
            "n_pairs": len(pairs),
            "candidate": {"name": cand.name, "backbone": cand.backbone, "fit": cand.fit},
        },
    )
    key = f"models/{version}.npz"
    with tempfile.TemporaryDirectory() as tmp:
        ctx.store.put(key, artifact.save(Path(tmp) / "m.npz").read_bytes())
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
            trained_on={"night": ctx.params["night_id"], "sessions": ts.sessions, "n_pairs": len(pairs)},
            metrics={"transfer_score": median_r, "n_transfer_pairs": len(pairs)},
            score=None,
            site_metrics=[
                {"site_id": sid, "alpha": float(model.alpha_[i]), **transfer_fields(site_tr, i)}
                for i, sid in enumerate(ts.site_ids)
            ],
        )
        mv_id = mv.id
    ctx.progress(1.0, f"{version}: {len(pairs)} pairs, median held-out transfer r {median_r}")
    return {
        "model_version": version,
        "model_version_id": mv_id,
        "score": None,
        "transfer_score": median_r,
        "candidate": cand.name,
    }
