"""Night stages 1 to 3: the day's responses, one refit per candidate model, and the choice.

Each refit freezes its backbone, fits per-site ridge readouts on every day seen so
far, screens itself (noise-ceiled predictivity, CKA, perturbation transfer on the
pairs shown today) and is stored as an immutable model version with its data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from itloop.night_params import NightConfig
from jobs.context import JobContext
from jobs.registry import job
from models.transfer import SiteTransfer, site_transfer
from server.modeling import service as modeling
from server.modeling.tables import ModelVersion
from server.recordings import service as recordings
from server.recordings.ingest.responses import resolve_window
from server.recordings.queries import responses_by_image
from server.recordings.tables import RecordingSession
from worker.night import REFIT, RESPONSES
from worker.steps.candidates import ENSEMBLE, resolve
from worker.steps.data import features, training_set

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
    """Make sure the day's responses exist in the night's window (ingest wrote the default one)."""
    cfg = night_config(ctx)
    with ctx.session() as session:
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        window = resolve_window(cfg.window_ms)
        if cfg.window_ms is not None:
            recordings.compute_responses(session=session, recording=rec, window_ms=window)
        table = responses_by_image(session=session, session_pk=rec.id, window_ms=window)
    if not table.trials:
        raise ValueError(f"session {rec.session_id!r} has no responses in window {window}")
    return {
        "images": len(table.image_ids),
        "sites": len(table.site_ids),
        "presentations": int(table.n_repeats.sum()),
        "window_ms": list(window),
    }


def family_cv_predict(
    X: np.ndarray, Y: np.ndarray, family: list[int], estimator: Any, n_folds: int = 5
) -> np.ndarray:
    """Out-of-sample predictions where a clean image and all its perturbed twins share a fold.

    Plain leave-one-out is wrong here: a perturbed image is predicted from its near-identical
    clean twin's *observed* response (and vice versa), so predicted changes come out
    anti-correlated with observed ones and predictivity is inflated.
    """
    fams = np.asarray(family)
    uniq = np.unique(fams)
    fold_of = {f: i % n_folds for i, f in enumerate(np.random.default_rng(0).permutation(uniq))}
    fold = np.array([fold_of[f] for f in fams])
    pred = np.full(Y.shape, np.nan)
    for k in range(min(n_folds, len(uniq))):
        test = fold == k
        if test.all() or not test.any():
            continue
        pred[test] = estimator().fit(X[~test], Y[~test]).predict(X[test])
    return pred


def _metric_rows(
    site_ids: list[str],
    report: Any,
    alpha: np.ndarray,
    drift: Any,
    gate: tuple[np.ndarray, list[str]],
    site_tr: SiteTransfer | None = None,
) -> list[dict[str, Any]]:
    passed, reasons = gate
    rows = []
    for i, sid in enumerate(site_ids):
        row: dict[str, Any] = {
            "site_id": sid,
            "predictivity": float(report.r[i]),
            "ceiled_predictivity": float(report.r_ceiled[i]),
            "noise_ceiling": float(report.ceiling[i]),
            "alpha": float(alpha[i]),
            "drift": bool(drift.flagged[i]) if drift is not None else False,
            "gated": not bool(passed[i]),
            "gate_reason": reasons[i] if not passed[i] else "",
        }
        if drift is not None and drift.flagged[i]:
            row["gate_reason"] = (row["gate_reason"] + "; " if row["gate_reason"] else "") + drift.reasons[i]
        if site_tr is not None:
            row.update(transfer_fields(site_tr, i))
        rows.append(row)
    return rows


def _pair_l2(images: list[Any], children: Any) -> np.ndarray:
    """Each pair's L2 distance as recorded in the twin's lineage (NaN where unknown)."""
    return np.array(
        [np.nan if images[c].achieved_l2 is None else float(images[c].achieved_l2) for c in children]
    )


def transfer_fields(tr: SiteTransfer, i: int) -> dict[str, Any]:
    """One site's transfer evidence as site-metric fields."""
    return {
        "transfer_n": int(tr.n[i]),
        "transfer_r": float(tr.r[i]),
        "transfer_r_low": float(tr.r_low[i]),
        "transfer_r_high": float(tr.r_high[i]),
        "transfer_slope": float(tr.slope[i]),
        "transfer_sign": float(tr.sign_agreement[i]),
        "transfer_sign_low": float(tr.sign_low[i]),
        "transfer_sign_high": float(tr.sign_high[i]),
    }


def _drift(session: Any, rec: RecordingSession, today: Any, window: Any) -> Any:
    """Reference-set drift against the subject's first recorded day (None on that day)."""
    from models.tracking import detect_drift
    from server.images.service import clean_pool as pool

    _, reference = pool(session)
    ref_ids = {im.id for im in reference}
    first = session.scalar(
        select(RecordingSession)
        .where(RecordingSession.subject_id == rec.subject_id, RecordingSession.day < rec.day)
        .order_by(RecordingSession.day, RecordingSession.id)
    )
    if first is None or not ref_ids:
        return None
    base = responses_by_image(session=session, session_pk=first.id, window_ms=window)
    shared = [i for i in today.image_ids if i in ref_ids and i in base.image_ids]
    if len(shared) < 3 or base.site_ids != today.site_ids:
        return None
    t_pad, b_pad = today.padded(), base.padded()
    t_rows = [today.image_ids.index(i) for i in shared]
    b_rows = [base.image_ids.index(i) for i in shared]
    return detect_drift(t_pad[t_rows], b_pad[b_rows])


@job(REFIT, queue="itloop-gpu", timeout_s=3 * 3600, max_attempts=2)
def refit(ctx: JobContext) -> dict[str, Any]:
    """Fit, screen and store one candidate model on every day seen so far."""
    from models.artifacts import ModelArtifact
    from models.backbones import build_backbone, checkpoint_sha256
    from models.readout import MultiRidgeCV
    from models.screening import screen_model, split_half_reliability
    from models.tracking import quality_gate

    cfg = night_config(ctx)
    cand = resolve(ctx.params["candidate"])
    version = f"night{ctx.params['night_id']}-{cand.name}"
    with ctx.session() as session:
        existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if existing is not None:  # a retry after the commit: the version is immutable, reuse it
            return {
                "model_version": version,
                "model_version_id": existing.id,
                "score": existing.score,
                "transfer_score": existing.metrics.get("transfer_score"),
                "candidate": cand.name,
            }
        rec = recordings.get_by_pk(session=session, session_pk=ctx.params["session_pk"])
        window = resolve_window(cfg.window_ms)
        ts = training_set(session, rec, window, cfg.train_days)
        drift = _drift(session, rec, ts.today, window)
        parents = {im.id: im.parent_id for im in ts.images}
    ctx.progress(0.1, f"{len(ts.images)} images x {len(ts.site_ids)} sites from {len(ts.sessions)} day(s)")
    if cand.fit == "pairs":
        from worker.steps.search_fit import refit_search

        return refit_search(ctx, cfg, cand, version, ts, parents, window)

    device = ctx.device()
    held_out = None
    warm: dict[str, Any] = {}
    if cand.fit == "trained":
        from worker.steps.trained import train_candidate

        try:
            cand, backbone, ckpt_sha, X, held_out, warm = train_candidate(ctx, cand, ts, parents)
        except Exception as exc:  # the night goes on with the other candidates
            log.warning("training %s failed; the night uses the other candidates", cand.name, exc_info=True)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            return {"model_version": None, "candidate": cand.name, "skipped": f"training failed ({reason})"}
    else:
        ckpt = cand.checkpoint_path(ctx.settings.data_dir)
        ckpt_sha = checkpoint_sha256(ckpt) if ckpt is not None else None
        backbone = build_backbone(cand.backbone, ckpt, **cand.kwargs).to(device)
        cache_root = Path(ctx.settings.data_dir) / "cache" / "features"
        X = features(ctx.store, cache_root, cand, backbone, ckpt_sha, ts.images, device)
    ctx.progress(0.5, f"features {X.shape}; fitting readouts")
    ctx.check_cancelled()

    readout = MultiRidgeCV().fit(X, ts.mean)
    pred = family_cv_predict(X, ts.mean, [parents[im.id] or im.id for im in ts.images], MultiRidgeCV)
    ceiling = split_half_reliability(ts.today.padded())
    row_of = {im.id: k for k, im in enumerate(ts.images)}
    # Every twin on record (any day, any target site) is a held-out test of this candidate: its
    # family-grouped prediction never saw the pair's parent or twin.
    pairs = sorted((row_of[p], row_of[c]) for c, p in parents.items() if p is not None and p in row_of)
    if held_out is not None:  # a trained core saw the other families: only these are held out
        pairs = [(p, c) for p, c in pairs if held_out[c]]
    transfer: dict[str, Any] = {}
    pair_arrays: dict[str, np.ndarray] = {}
    site_tr = None
    if pairs:
        pc, cc = (np.array(x) for x in zip(*pairs, strict=True))
        pred_change, obs_change = pred[cc] - pred[pc], ts.mean[cc] - ts.mean[pc]
        site_tr = site_transfer(pred_change, obs_change)
        pair_arrays = {
            "pair_parent_id": np.array([ts.images[i].id for i in pc]),
            "pair_child_id": np.array([ts.images[i].id for i in cc]),
            "pair_pred_change": pred_change,
            "pair_obs_change": obs_change,
            "pair_l2": _pair_l2(ts.images, cc),
        }
        if len(pairs) >= 3:
            transfer = {"transfer_pred": (pred[pc], pred[cc]), "transfer_obs": (ts.mean[pc], ts.mean[cc])}
    report = screen_model(pred, ts.mean, ceiling, model_features=X, **transfer)
    gate = quality_gate(ceiling, cfg.ceiling_threshold)

    metrics = {
        "score": report.score,
        "transfer_score": report.transfer_score,
        "cka": report.cka,
        "median_r": float(np.nanmedian(report.r)),
        "n_images": len(ts.images),
        "n_transfer_pairs": len(pairs),
        "n_gated": int((~gate[0]).sum()),
        "n_drift": int(drift.flagged.sum()) if drift is not None else 0,
    }
    artifact = ModelArtifact.from_readout(
        readout,
        backbone=cand.backbone,
        layer=cand.layer,
        pool=cand.pool,
        site_ids=ts.site_ids,
        checkpoint_sha256=ckpt_sha,
        backbone_kwargs=cand.kwargs,
        metrics={
            "r": report.r,
            "r_ceiled": report.r_ceiled,
            "ceiling": ceiling,
            "response_low": np.nanmin(ts.mean, axis=0),
            "response_high": np.nanmax(ts.mean, axis=0),
            **pair_arrays,
        },
        training={
            "sessions": ts.sessions,
            "images": [im.sha256 for im in ts.images],
            "night": ctx.params["night_id"],
            "window_ms": list(window),
            "candidate": {
                "name": cand.name,
                "backbone": cand.backbone,
                "layer": cand.layer,
                "pool": cand.pool,
                "checkpoint": cand.checkpoint,
                "kwargs": cand.kwargs,
                "fit": cand.fit,
            },
        },
    )
    key = f"models/{version}.npz"
    with tempfile.TemporaryDirectory() as tmp:
        ctx.store.put(key, artifact.save(Path(tmp) / "m.npz").read_bytes())
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
            checkpoint_sha256=ckpt_sha,
            layer=cand.layer,
            pool=cand.pool,
            artifact_key=key,
            trained_on={
                "night": ctx.params["night_id"],
                "sessions": ts.sessions,
                "n_images": len(ts.images),
                "window_ms": list(window),
                **({"weights_key": cand.checkpoint, **warm} if cand.fit == "trained" else {}),
            },
            metrics=metrics,
            score=report.score,
            site_metrics=_metric_rows(ts.site_ids, report, readout.alpha_, drift, gate, site_tr),
            parent_id=parent,
        )
        mv_id = mv.id
    ctx.progress(1.0, f"{version}: median ceiled r {report.score:.3f}")
    return {
        "model_version": version,
        "model_version_id": mv_id,
        "score": report.score,
        "transfer_score": report.transfer_score,
        "candidate": cand.name,
    }


def load_artifact(ctx: JobContext, version: str) -> Any:
    """The stored artifact of a model version, as a :class:`models.artifacts.ModelArtifact`."""
    from models.artifacts import ModelArtifact

    with ctx.session() as session:
        mv = modeling.get(session=session, version=version)
        key = mv.artifact_key
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        path.write_bytes(ctx.store.get(key))
        return ModelArtifact.load(path)


def nanmedian_or_none(a: np.ndarray) -> float | None:
    return float(np.nanmedian(a)) if np.isfinite(a).any() else None


def load_encoder(ctx: JobContext, version: str) -> Any:
    """The differentiable surrogate of a stored version, on the job's device, eval mode.

    Returns ``(encoder, artifact)``; for an ensemble version the artifact is its first member's
    (all members share the site order).
    """
    with ctx.session() as session:
        mv = modeling.get(session=session, version=version)
        backbone, key = mv.backbone, mv.artifact_key
    if backbone == ENSEMBLE:
        from models.ensemble import EnsembleEncoder

        members = json.loads(ctx.store.get(key))["members"]
        loaded = [load_encoder(ctx, m) for m in members]
        return EnsembleEncoder([e for e, _ in loaded]).to(ctx.device()).eval(), loaded[0][1]
    art = load_artifact(ctx, version)
    ckpt = None
    spec = dict(art.training.get("candidate") or {})
    if art.checkpoint_sha256 is not None and spec.get("fit") == "trained":
        from worker.steps.trained import local_weights

        ckpt = local_weights(ctx, spec["checkpoint"], art.checkpoint_sha256)
    elif art.checkpoint_sha256 is not None:
        ckpt = resolve(spec).checkpoint_path(ctx.settings.data_dir)
    return art.to_encoder(ckpt).to(ctx.device()).eval(), art
