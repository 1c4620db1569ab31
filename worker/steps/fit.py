"""Night stages 1 to 3: the day's responses, one refit per candidate model, and the choice.

Each refit freezes its backbone, fits per-site ridge readouts on every day seen so
far, screens itself (noise-ceiled predictivity, CKA, perturbation transfer on the
pairs shown today) and is stored as an immutable model version with its data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from models.transfer import SiteTransfer, realized_effect, site_transfer
from server.errors import Conflict
from server.modeling import service as modeling
from server.modeling.tables import ModelVersion
from server.recordings import service as recordings
from server.recordings.queries import responses_by_image
from server.recordings.tables import RecordingSession
from worker.context import JobContext
from worker.night import REFIT, RESPONSES, SELECT
from worker.registry import job
from worker.steps.candidates import SEARCH, resolve
from worker.steps.config import NightConfig
from worker.steps.data import clean_pool, features, pixels, training_set
from worker.steps.data import site_pks as site_pks_of

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


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
        window = cfg.window_ms or recordings.default_window()
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
    from worker.steps.data import clean_pool as pool

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
        window = cfg.window_ms or recordings.default_window()
        ts = training_set(session, rec, window, cfg.train_days)
        drift = _drift(session, rec, ts.today, window)
        parents = {im.id: im.parent_id for im in ts.images}
    ctx.progress(0.1, f"{len(ts.images)} images x {len(ts.site_ids)} sites from {len(ts.sessions)} day(s)")
    if cand.fit == "pairs":
        return _refit_search(ctx, cfg, cand, version, ts, parents, window)

    device = ctx.device()
    held_out = None
    warm: dict[str, Any] = {}
    if cand.fit == "trained":
        try:
            cand, backbone, ckpt_sha, X, held_out, warm = _train_core(ctx, cand, ts, parents)
        except Exception as exc:  # noqa: BLE001 - the night goes on with the other candidates
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


def _train_core(ctx: JobContext, cand: Any, ts: Any, parents: dict[int, int | None]) -> tuple[Any, ...]:
    """Train the data-driven candidate's core (warm from its last version); returns what refit needs.

    The trained weights are a checkpoint of their own, stored with the model version, so the
    version can be rebuilt anywhere. Returns ``(candidate, backbone, checkpoint sha256, features,
    held-out mask)`` where the features are the trained sites' outputs for every image.
    """
    import hashlib
    import io

    import torch

    from models.backbones import build_backbone
    from models.trainable import train_core

    device = ctx.device()
    x = pixels(ctx.store, ts.images)
    size, n_sites = int(x.shape[-1]), len(ts.site_ids)
    kwargs = {**cand.kwargs, "n_sites": n_sites, "image_size": size}
    backbone = build_backbone(cand.backbone, None, **kwargs).to(device)
    with torch.no_grad():
        front = torch.cat(
            [
                backbone.net.front(backbone.normalize(x[i : i + 64].to(device))).cpu()
                for i in range(0, len(x), 64)
            ]
        )
    init = _previous_weights(ctx, cand.name)
    families = np.array([parents[im.id] or im.id for im in ts.images])
    report = train_core(backbone.net.cpu(), front, ts.mean, families, init_state=init, seed=0)
    backbone = backbone.to(device).eval()
    buf = io.BytesIO()
    torch.save(backbone.net.state_dict(), buf)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    key = f"models/weights/{cand.name}-{sha[:16]}.pt"
    ctx.store.put(key, blob)
    ctx.progress(0.5, f"core trained: {report.epochs} epochs, held-out median r {report.val_r:.3f}")
    with torch.no_grad():
        out = torch.cat(
            [backbone.net.from_front(front[i : i + 256].to(device)).cpu() for i in range(0, len(front), 256)]
        )
    trained = replace(cand, checkpoint=key, kwargs=kwargs)
    record = {"warm_started": report.warm_started, "epochs": report.epochs, "held_out_r": report.val_r}
    return trained, backbone, sha, out.numpy().astype(np.float64), report.held_out, record


def _previous_weights(ctx: JobContext, candidate: str) -> dict[str, Any] | None:
    """The newest stored weights of this candidate (warm start), or None."""
    import io

    import torch

    with ctx.session() as session:
        records = session.scalars(
            select(ModelVersion.trained_on)
            .where(ModelVersion.candidate == candidate)
            .order_by(ModelVersion.id.desc())
        ).all()
    key = next((r["weights_key"] for r in records if r and r.get("weights_key")), None)
    if not key:
        return None
    try:
        return torch.load(io.BytesIO(ctx.store.get(key)), weights_only=True)
    except Exception:  # noqa: BLE001 - a missing or unreadable file means a cold start, said in the log
        log.warning("could not load %s for a warm start; training from scratch", key, exc_info=True)
        return None


def _refit_search(
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
    median_r = _nanmedian(site_tr.r)
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
        ckpt = _local_weights(ctx, spec["checkpoint"], art.checkpoint_sha256)
    elif art.checkpoint_sha256 is not None:
        ckpt = resolve(spec).checkpoint_path(ctx.settings.data_dir)
    return art.to_encoder(ckpt).to(ctx.device()).eval(), art


def _local_weights(ctx: JobContext, key: str, sha256: str) -> Path:
    """A trained version's weights as a local file (fetched from the store once per machine)."""
    path = Path(ctx.settings.data_dir) / "cache" / "weights" / f"{sha256}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(ctx.store.get(key))
        tmp.replace(path)
    return path


def _evidence(
    name: str, art: Any, site_ids: list[str], changes: tuple[Any, Any] | None = None, l2: Any = None
) -> Any:
    """A source's per-site evidence in ``site_ids`` order: its stored pairs, or ``changes``.

    ``changes`` is ``(predicted, observed)`` over pairs, for a source with no artifact of its own
    (the ensemble), which has no clean-image predictivity either.
    """
    from models.selection import SourceEvidence

    cols = [art.site_ids.index(s) for s in site_ids]
    if changes is None:
        pred, obs = art.metrics.get("pair_pred_change"), art.metrics.get("pair_obs_change")
    else:
        pred, obs = changes
    l2 = art.metrics.get("pair_l2") if l2 is None else l2
    effect = effect_se = None
    if pred is None or obs is None or len(obs) == 0:
        empty = np.zeros((0, len(site_ids)))
        tr = site_transfer(empty, empty)
    else:
        tr = site_transfer(np.asarray(pred)[:, cols], np.asarray(obs)[:, cols])
        if l2 is not None and len(l2) == len(obs):
            effect, effect_se, _ = realized_effect(
                np.asarray(pred)[:, cols], np.asarray(obs)[:, cols], np.asarray(l2)
            )
    r_ceiled = np.asarray(art.metrics.get("r_ceiled", np.full(len(art.site_ids), np.nan)))[cols]
    if changes is not None:
        r_ceiled = np.full(len(site_ids), np.nan)
    return SourceEvidence(name=name, transfer=tr, predictivity=r_ceiled, effect=effect, effect_se=effect_se)


def _ensemble_changes(arts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Mean predicted change of all members, and the observed change, over the pairs all of them hold out."""
    rows: list[dict[tuple[int, int], int]] = []
    for a in arts.values():
        p, c = a.metrics.get("pair_parent_id"), a.metrics.get("pair_child_id")
        if p is None or c is None or len(p) == 0:
            return None
        rows.append({(int(x), int(y)): k for k, (x, y) in enumerate(zip(p, c, strict=True))})
    common = sorted(set.intersection(*(set(r) for r in rows)))
    if not common:
        return None
    preds = [
        np.asarray(a.metrics["pair_pred_change"])[[r[k] for k in common]]
        for a, r in zip(arts.values(), rows, strict=True)
    ]
    first = next(iter(arts.values()))
    obs = np.asarray(first.metrics["pair_obs_change"])[[rows[0][k] for k in common]]
    l2 = first.metrics.get("pair_l2")
    l2 = None if l2 is None else np.asarray(l2)[[rows[0][k] for k in common]]
    return np.mean(preds, axis=0), obs, l2


def _record_ensemble(
    ctx: JobContext, session: Any, members: list[str], evidence: Any, site_ids: list[str]
) -> Any:
    """The ensemble as a model version of its own, so lineage and analysis can name it."""
    version = f"night{ctx.params['night_id']}-{ENSEMBLE}"
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if existing is not None:
        return existing
    key = f"models/{version}.json"
    ctx.store.put(key, json.dumps({"members": members}).encode())
    tr = evidence.transfer
    return modeling.record_model_version(
        session=session,
        version=version,
        candidate=ENSEMBLE,
        backbone=ENSEMBLE,
        checkpoint_sha256=None,
        layer="",
        pool="",
        artifact_key=key,
        trained_on={"night": ctx.params["night_id"], "members": members},
        metrics={"members": members, "median_transfer_r": _nanmedian(tr.r)},
        score=None,
        site_metrics=[{"site_id": sid, **transfer_fields(tr, i)} for i, sid in enumerate(site_ids)],
    )


def _nanmedian(a: np.ndarray) -> float | None:
    return float(np.nanmedian(a)) if np.isfinite(a).any() else None


def plan_shards(
    eligible: list[str],
    source_of: dict[str, str],
    search: str | None,
    cfg: NightConfig,
    clean_ids: list[int],
    search_ready: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Synthesis shards: one model version each, a few sites, and which image slots they make.

    Each site's ``clean_per_site`` parent images are slots ``0..k-1``. With a fitted search, the
    first ``round(search_share * k)`` slots (at least one when ``k >= 2``) of every site that has
    enough pairs are made along the search's direction, the rest (and the site's targeted and
    random twins) by the site's chosen source; a site whose chosen source is the search gets all
    its slots from it.
    """
    k = cfg.clean_per_site
    n_search = round(cfg.search_share * k) if search else 0
    if search and cfg.search_share > 0 and k >= 2:
        n_search = min(max(n_search, 1), k)
    jobs: dict[tuple[str, int, int, bool], list[str]] = {}
    for sid in eligible:
        source = source_of[sid]
        if search and source != search and n_search and sid in search_ready:
            jobs.setdefault((search, 0, n_search, n_search == k), []).append(sid)
            if n_search < k:
                jobs.setdefault((source, n_search, k, True), []).append(sid)
        else:
            jobs.setdefault((source, 0, k, True), []).append(sid)
    shards = []
    for (version, lo, hi, extras), sites in sorted(jobs.items()):
        for i in range(0, len(sites), cfg.sites_per_shard):
            shards.append(
                {
                    "model_version": version,
                    "sites": sites[i : i + cfg.sites_per_shard],
                    "clean_image_ids": clean_ids,
                    "slots": [lo, hi],
                    "extras": extras,
                }
            )
    return shards


@job(SELECT, timeout_s=1800)
def select_model(ctx: JobContext) -> dict[str, Any]:
    """Choose each site's source by measured transfer (predictivity before twins) and plan the shards."""
    from models.selection import choose_per_site
    from server.modeling.tables import SiteMetric

    cfg = night_config(ctx)
    everything = ctx.results_of(REFIT)
    results = [r for r in everything if r.get("model_version")]
    if not results:
        raise Conflict("no candidate model was fitted")
    skipped = [f"{r.get('candidate')}: {r['skipped']}" for r in everything if r.get("skipped")]
    arts = {r["model_version"]: load_artifact(ctx, r["model_version"]) for r in results}
    search = next((r["model_version"] for r in results if r.get("candidate") == SEARCH), None)
    members = [v for v in arts if v != search]  # surrogates proper: they predict clean responses
    if not members:
        raise Conflict("no candidate surrogate was fitted (the search alone cannot start a night)")
    site_ids = list(arts[members[0]].site_ids)
    evidence = [_evidence(v, a, site_ids) for v, a in arts.items()]
    ens_arts = {v: arts[v] for v in members}
    ens_changes = _ensemble_changes(ens_arts) if cfg.ensemble and len(members) > 1 else None
    if ens_changes is not None:
        evidence.append(_evidence(ENSEMBLE, arts[members[0]], site_ids, ens_changes[:2], ens_changes[2]))
    choices = choose_per_site(evidence, min_pairs=cfg.min_transfer_pairs)
    counts: dict[str, int] = {}
    for c in choices:
        counts[c.source] = counts.get(c.source, 0) + 1
    with ctx.session() as session:
        version_of = {v: v for v in arts}
        if any(c.source == ENSEMBLE for c in choices):
            ens = _record_ensemble(ctx, session, members, evidence[-1], site_ids)
            version_of[ENSEMBLE] = ens.version
        top = max(counts, key=lambda k: (counts[k], k not in (ENSEMBLE, search)))
        summary = ", ".join(f"{version_of[k]} for {n} site(s)" for k, n in sorted(counts.items()))
        mv = modeling.get(session=session, version=version_of[top])
        by_transfer = sum(c.by == "transfer" for c in choices)
        modeling.choose(
            session=session,
            model_version=mv,
            reason=(
                f"chosen per site: {summary}; {by_transfer} site(s) by measured transfer on earlier "
                f"twins, {len(choices) - by_transfer} by ceiled predictivity (no twins yet)"
            ),
        )
        night_row = _night(session, ctx.params["night_id"])
        night_row.model_version_id = mv.id
        if skipped:  # e.g. a surrogate that failed to train: the others stood in, and the note says so
            note = "; ".join(skipped)
            night_row.note = f"{night_row.note}; {note}" if night_row.note else note
        # The per-site choice and its evidence, on the chosen version's site metric rows.
        ids = {v: modeling.get(session=session, version=v).id for v in version_of.values()}
        site_pk = site_pks_of(session, site_ids)
        for sid, choice in zip(site_ids, choices, strict=True):
            row = session.scalar(
                select(SiteMetric).where(
                    SiteMetric.model_version_id == ids[version_of[choice.source]],
                    SiteMetric.site_pk == site_pk[sid],
                )
            )
            if row is not None:
                row.chosen_for_site = True
                row.choice_reason = f"{choice.by}: {choice.reason}"
        gate_rows = modeling.site_metrics(
            session=session, mv=modeling.get(session=session, version=members[0])
        )
        clean, _ = clean_pool(session)
        clean_ids = [im.id for im in clean]
    gated = {m["site_id"]: m.get("gate_reason") or "gated" for m in gate_rows if m.get("gated")}
    eligible = [sid for sid in site_ids if sid not in gated]
    if not clean_ids:
        raise Conflict("no clean image set is registered; nothing to perturb")
    source_of = {sid: version_of[c.source] for sid, c in zip(site_ids, choices, strict=True)}
    search_ev = next((e for e in evidence if e.name == search), None)
    ready = {
        sid
        for i, sid in enumerate(site_ids)
        if search_ev and search_ev.transfer.n[i] >= cfg.min_transfer_pairs
    }
    shards = plan_shards(eligible, source_of, search, cfg, clean_ids, search_ready=ready)
    return {
        "model_version": mv.version,
        "model_version_id": mv.id,
        "shards": shards,
        "gated": gated,
        "eligible": eligible,
        "site_sources": {
            sid: {"source": source_of[sid], "by": c.by} for sid, c in zip(site_ids, choices, strict=True)
        },
    }


def _night(session: Any, night_id: int) -> Any:
    from server.jobs.tables import Night

    return session.get(Night, night_id)
