"""Model versions in the object store: what a refit stores and returns, and loading them back.

Shared by the refits (:mod:`worker.stages.fit`, :mod:`worker.stages.search_fit`), the choice,
synthesis and the analysis; kept out of ``fit.py`` so the across-day search's refit and the
ordinary one use the same helpers without importing each other.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jobs.context import JobContext
from models.transfer import SiteTransfer
from server.modeling import service as modeling
from worker.candidates import ENSEMBLE, resolve
from worker.stages.trained import local_weights


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


def refit_result(version: str | None, mv_id: int | None, cand: str, **extra: Any) -> dict[str, Any]:
    """What a refit job returns (``night.select`` reads it)."""
    return {"model_version": version, "model_version_id": mv_id, "candidate": cand, **extra}


def store_artifact(ctx: JobContext, version: str, artifact: Any) -> str:
    """Write a model artifact to the object store; returns its key."""
    key = f"models/{version}.npz"
    with tempfile.TemporaryDirectory() as tmp:
        ctx.store.put(key, artifact.save(Path(tmp) / "m.npz").read_bytes())
    return key


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
    """The median of the finite values, None when there are none (stored as JSON null)."""
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
        ckpt = local_weights(ctx, spec["checkpoint"], art.checkpoint_sha256)
    elif art.checkpoint_sha256 is not None:
        ckpt = resolve(spec).checkpoint_path(ctx.settings.data_dir)
    return art.to_encoder(ckpt).to(ctx.device()).eval(), art
