"""Night stages 1 to 3: the day's responses, one refit per candidate model, and the choice.

Each refit freezes its backbone, fits per-site ridge readouts on every day seen so
far, screens itself (noise-ceiled predictivity, CKA, perturbation transfer on the
pairs shown today) and is stored as an immutable model version with its data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from itloop.errors import InvalidInput
from itloop.night_params import NightConfig
from jobs.context import JobContext
from jobs.registry import job
from server.modeling import service as modeling
from server.modeling.tables import ModelVersion
from server.recordings import service as recordings
from server.recordings.ingest.responses import resolve_window
from worker.candidates import Candidate, resolve
from worker.night import REFIT, RESPONSES
from worker.stages import night_data
from worker.stages.data import features
from worker.stages.search_fit import refit_search
from worker.stages.versions import refit_result, store_artifact, transfer_fields

if TYPE_CHECKING:
    from models.candidate_fit import CandidateFit
    from worker.stages.readout_state import ReadoutFit

log = logging.getLogger(__name__)


def night_config(ctx: JobContext) -> NightConfig:
    return NightConfig.from_params(ctx.params.get("night_params") or {}, ctx.settings.night_defaults)


def night_result(ctx: JobContext, kind: str) -> dict[str, Any]:
    """The result of this night's (single) job of ``kind``, whether or not it is a direct dependency."""
    from server.jobs.tables import Job, JobState

    with ctx.session() as session:
        result = session.scalar(
            select(Job.result)
            .where(Job.night_id == ctx.night_id, Job.kind == kind, Job.state == JobState.succeeded)
            .order_by(Job.id.desc())
        )
    if result is None:
        raise LookupError(f"night {ctx.night_id} has no finished {kind} job")
    return dict(result)


@job(RESPONSES, timeout_s=3600)
def responses(ctx: JobContext) -> dict[str, Any]:
    """The day's responses in the night's window, and the night's data every later stage shares."""
    cfg = night_config(ctx)
    with ctx.session() as session:
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        window = resolve_window(cfg.window_ms)
        if cfg.window_ms is not None:
            recordings.compute_responses(session=session, recording=rec, window_ms=window)
        try:
            data = night_data.load_or_build(
                session, ctx.store, ctx.params["night_id"], rec, window, cfg.train_days
            )
        except InvalidInput:
            raise ValueError(f"session {rec.session_id!r} has no responses in window {window}") from None
    trials = data.today_trials
    return {
        "images": len(data.today_image_ids),
        "sites": len(data.site_ids),
        "presentations": int(np.isfinite(trials[:, 0, :]).sum()) if trials.size else 0,
        "window_ms": list(window),
        "training_images": len(data.image_ids),
        "days": len(data.sessions),
    }


def load_night_data(ctx: JobContext, *, with_images: bool = True) -> tuple[night_data.NightData, list[Any]]:
    """The night's shared data (built by ``night.responses``) and, unless told not to, its images' rows."""
    cfg = night_config(ctx)
    with ctx.session() as session:
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        window = resolve_window(cfg.window_ms)
        data = night_data.load_or_build(
            session, ctx.store, ctx.params["night_id"], rec, window, cfg.train_days
        )
        return data, data.images(session) if with_images else []


def _metric_rows(data: night_data.NightData, fit: CandidateFit) -> list[dict[str, Any]]:
    """One site-metric row per site: predictivity, penalty, gate and drift, transfer evidence."""
    report, (passed, reasons) = fit.report, fit.gate
    flagged, drift_reasons = data.drift_flagged, data.drift_reasons or []
    rows = []
    for i, sid in enumerate(data.site_ids):
        drifted = flagged is not None and bool(flagged[i])
        row: dict[str, Any] = {
            "site_id": sid,
            "predictivity": float(report.r[i]),
            "ceiled_predictivity": float(report.r_ceiled[i]),
            "noise_ceiling": float(report.ceiling[i]),
            "alpha": float(fit.readout.alpha_[i]),
            "drift": drifted,
            "gated": not bool(passed[i]),
            "gate_reason": reasons[i] if not passed[i] else "",
        }
        if drifted:
            row["gate_reason"] = (row["gate_reason"] + "; " if row["gate_reason"] else "") + drift_reasons[i]
        if fit.transfer is not None:
            row.update(transfer_fields(fit.transfer, i))
        rows.append(row)
    return rows


@job(REFIT, queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)
def refit(ctx: JobContext) -> dict[str, Any]:
    """Fit, screen and store one candidate model on every day seen so far (the night's shared data)."""
    from models.candidate_fit import fit_candidate

    cfg = night_config(ctx)
    cand = resolve(ctx.params["candidate"])
    version = f"night{ctx.params['night_id']}-{cand.name}"
    with ctx.session() as session:
        existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if existing is not None:  # a retry after the commit: the version is immutable, reuse it
            tr = existing.metrics.get("transfer_score")
            return refit_result(version, existing.id, cand.name, score=existing.score, transfer_score=tr)
    data, images = load_night_data(ctx)
    ctx.progress(0.1, f"{len(images)} images x {len(data.site_ids)} sites from {len(data.sessions)} day(s)")
    if cand.fit == "pairs":
        return refit_search(ctx, cfg, cand, version, data, images)
    try:
        features_of = candidate_features(ctx, cand, data, images)
    except TrainingFailed as exc:
        return refit_result(None, None, cand.name, skipped=f"training failed ({exc})")
    ctx.progress(0.5, f"features {features_of.X.shape}; fitting readouts")
    ctx.check_cancelled()
    factorized, blend = cand.fit == "factorized", cand.fit == "blend"
    own_readout = factorized or blend  # the GCV readout state is a ridge readout's
    readout = None if own_readout else _fit_readout(ctx, cfg, version, features_of, data, images)
    fit = fit_candidate(
        features_of.X,
        data.mean,
        night_data.families(images),
        data.today_trials,
        night_data.twin_pairs(images),
        ceiling_threshold=cfg.ceiling_threshold,
        held_out=features_of.held_out,
        readout=None if readout is None else readout.readout,
        factorized_positions=_positions(cand) if factorized else None,
        blend_positions=_blend_positions(cand) if blend else None,
    )
    if readout is not None:
        features_of.readout_fit = {
            "cv": "gcv",
            "fit": readout.mode,
            "base": readout.base,
            "new_images": readout.new_images,
            "revised_images": readout.revised_images,
        }
    mv_id = _store_version(ctx, version, features_of, data, images, fit)
    ctx.progress(1.0, f"{version}: median ceiled r {fit.report.score:.3f}")
    return refit_result(
        version,
        mv_id,
        features_of.cand.name,
        score=fit.report.score,
        transfer_score=fit.report.transfer_score,
    )


def _positions(cand: Candidate) -> int:
    """Positions per channel of a factorized candidate's (C, grid, grid) feature map (checked by resolve)."""
    return int(cand.kwargs["grid"]) ** 2


def _blend_positions(cand: Candidate) -> tuple[int, ...]:
    """Positions per channel of each block of a blended candidate's features (grids checked by resolve)."""
    return tuple(int(g) ** 2 for g in cand.kwargs["grid"])


def _fit_readout(
    ctx: JobContext,
    cfg: NightConfig,
    version: str,
    cf: CandidateFeatures,
    data: night_data.NightData,
    images: list[Any],
) -> ReadoutFit | None:
    """The GCV readout, continued from an earlier night's statistics where valid (None: exact LOO)."""
    if cfg.readout_cv != "gcv":
        return None
    from models.readout import one_per_group
    from worker.stages.readout_state import fit_readout

    with ctx.session() as session:
        return fit_readout(
            session,
            ctx.store,
            version,
            candidate_spec(cf.cand),
            cf.checkpoint_sha,
            data.site_ids,
            data.window_ms,
            [im.sha256 for im in images],
            cf.X,
            data.mean,
            one_per_group(night_data.families(images)),
            ctx.device(),
        )


class TrainingFailed(Exception):
    """A data-driven candidate could not be trained; the night goes on with the others."""


@dataclass
class CandidateFeatures:
    """A candidate's features of the night's images, and what its stored version must record."""

    cand: Candidate
    X: np.ndarray
    checkpoint_sha: str | None
    held_out: np.ndarray | None = None  # a trained core saw the other families
    warm: dict[str, Any] = field(default_factory=dict)
    readout_fit: dict[str, Any] | None = None  # how the GCV readout was fitted (None: exact LOO)


def candidate_features(
    ctx: JobContext, cand: Candidate, data: night_data.NightData, images: list[Any]
) -> CandidateFeatures:
    """Frozen-backbone features (cached per image hash), or a trained core's outputs."""
    from models.backbones import build_backbone, checkpoint_sha256

    if cand.fit == "trained":
        from worker.stages.trained import train_candidate

        try:
            trained, _, sha, X, held_out, warm = train_candidate(ctx, cand, data, images)
        except Exception as exc:
            log.warning("training %s failed; the night uses the other candidates", cand.name, exc_info=True)
            raise TrainingFailed(
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            ) from exc
        return CandidateFeatures(trained, X, sha, held_out, warm)
    device = ctx.device()
    ckpt = cand.checkpoint_path(ctx.settings.data_dir)
    ckpt_sha = checkpoint_sha256(ckpt) if ckpt is not None else None
    backbone = build_backbone(cand.backbone, ckpt, **cand.kwargs).to(device)
    cache_root = Path(ctx.settings.data_dir) / "cache" / "features"
    return CandidateFeatures(
        cand, features(ctx.store, cache_root, cand, backbone, ckpt_sha, images, device), ckpt_sha
    )


def _pair_arrays(images: list[Any], fit: CandidateFit) -> dict[str, np.ndarray]:
    """The held-out twin pairs (ids, predicted and observed changes, L2) stored with the artifact."""
    if not len(fit.pairs):
        return {}
    pc, cc = fit.pairs[:, 0], fit.pairs[:, 1]
    return {
        "pair_parent_id": np.array([images[i].id for i in pc]),
        "pair_child_id": np.array([images[i].id for i in cc]),
        "pair_pred_change": fit.pred_change,
        "pair_obs_change": fit.obs_change,
        # each pair's L2 distance as recorded in the twin's lineage (NaN where unknown)
        "pair_l2": np.array(
            [np.nan if images[c].achieved_l2 is None else float(images[c].achieved_l2) for c in cc]
        ),
    }


def candidate_spec(cand: Candidate) -> dict[str, Any]:
    return {
        "name": cand.name,
        "backbone": cand.backbone,
        "layer": cand.layer,
        "pool": cand.pool,
        "checkpoint": cand.checkpoint,
        "kwargs": cand.kwargs,
        "fit": cand.fit,
    }


def _version_metrics(data: night_data.NightData, images: list[Any], fit: CandidateFit) -> dict[str, Any]:
    """The model version's headline metrics (the per-site ones are its site metric rows)."""
    report = fit.report
    return {
        "score": report.score,
        "transfer_score": report.transfer_score,
        "cka": report.cka,
        "median_r": float(np.nanmedian(report.r)),
        "n_images": len(images),
        "n_transfer_pairs": len(fit.pairs),
        "n_gated": int((~fit.gate[0]).sum()),
        "n_drift": int(data.drift_flagged.sum()) if data.drift_flagged is not None else 0,
    }


def _store_version(
    ctx: JobContext,
    version: str,
    cf: CandidateFeatures,
    data: night_data.NightData,
    images: list[Any],
    fit: CandidateFit,
) -> int:
    """Store the fitted candidate's artifact and record it as a model version; returns its id."""
    from models.artifacts import ModelArtifact

    cand, night, report = cf.cand, ctx.params["night_id"], fit.report
    metrics = {"r": report.r, "r_ceiled": report.r_ceiled, "ceiling": fit.ceiling}
    metrics |= {"response_low": np.nanmin(data.mean, axis=0), "response_high": np.nanmax(data.mean, axis=0)}
    training = {"sessions": data.sessions, "images": [im.sha256 for im in images], "night": night}
    training |= {"window_ms": list(data.window_ms), "candidate": candidate_spec(cand)}
    artifact = ModelArtifact.from_readout(
        fit.readout,
        backbone=cand.backbone,
        layer=cand.layer,
        pool=cand.pool,
        site_ids=data.site_ids,
        checkpoint_sha256=cf.checkpoint_sha,
        backbone_kwargs=cand.kwargs,
        metrics={**metrics, **_pair_arrays(images, fit)},
        training=training,
    )
    key = store_artifact(ctx, version, artifact)
    trained_on = {
        "night": night,
        "sessions": data.sessions,
        "n_images": len(images),
        "window_ms": list(data.window_ms),
    }
    if cand.fit == "trained":
        trained_on |= {"weights_key": cand.checkpoint, **cf.warm}
    if cf.readout_fit is not None:
        trained_on["readout"] = cf.readout_fit
    with ctx.session() as session:
        parent = session.scalar(
            select(ModelVersion.id)
            .where(ModelVersion.candidate == cand.name, ModelVersion.chosen.is_(True))
            .order_by(ModelVersion.id.desc())
        )
        mv = modeling.record_model_version(
            session=session,
            version=version,
            candidate=cand.name,
            backbone=cand.backbone,
            checkpoint_sha256=cf.checkpoint_sha,
            layer=cand.layer,
            pool=cand.pool,
            artifact_key=key,
            trained_on=trained_on,
            metrics=_version_metrics(data, images, fit),
            score=report.score,
            site_metrics=_metric_rows(data, fit),
            parent_id=parent,
        )
        return int(mv.id)
