"""Night stage 2, the data-driven candidate: train its core on the lab's responses (models.trainable).

The trained weights are a checkpoint of their own, stored in the object store with the model
version, so any worker can rebuild the version (fetched once per machine into the data folder).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from jobs.context import JobContext
from server.modeling.tables import ModelVersion
from worker.stages.data import pixels
from worker.stages.night_data import families

log = logging.getLogger(__name__)


def train_candidate(ctx: JobContext, cand: Any, data: Any, images: list[Any]) -> tuple[Any, ...]:
    """Train the data-driven candidate's core (warm from its last version); returns what refit needs.

    The trained weights are a checkpoint of their own, stored with the model version, so the
    version can be rebuilt anywhere. Returns ``(candidate, backbone, checkpoint sha256, features,
    held-out mask, warm-start record)`` where the features are the trained sites' outputs for every
    image. ``data`` is the night's shared data (worker.stages.night_data), ``images`` its rows.
    """
    import hashlib
    import io

    import torch

    from models.backbones import build_backbone
    from models.trainable import TrainedVOne, front_maps, train_core

    device = ctx.device()
    x = pixels(ctx.store, images)
    size, n_sites = int(x.shape[-1]), len(data.site_ids)
    kwargs = {**cand.kwargs, "n_sites": n_sites, "image_size": size}
    backbone = build_backbone(cand.backbone, None, **kwargs).to(device)
    net = backbone.net  # moved with the backbone: .to() and .cpu() act in place on modules
    if not isinstance(net, TrainedVOne):
        raise TypeError(f"candidate {cand.name!r}: backbone {cand.backbone!r} has no trainable core")
    front = front_maps(
        net, backbone.normalize, x, device
    )  # on the device: the core trains where the maps are
    init = previous_weights(ctx, cand.name)
    report = train_core(net, front, data.mean, families(images), init_state=init, seed=0)
    backbone = backbone.to(device).eval()
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in backbone.net.state_dict().items()}, buf)  # loadable anywhere
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    key = f"models/weights/{cand.name}-{sha[:16]}.pt"
    ctx.store.put(key, blob)
    ctx.progress(0.5, f"core trained: {report.epochs} epochs, held-out median r {report.val_r:.3f}")
    with torch.no_grad():
        out = torch.cat([net.from_front(front[i : i + 256]).cpu() for i in range(0, len(front), 256)])
    trained = replace(cand, checkpoint=key, kwargs=kwargs)
    record = {"warm_started": report.warm_started, "epochs": report.epochs, "held_out_r": report.val_r}
    return trained, backbone, sha, out.numpy().astype(np.float64), report.held_out, record


def previous_weights(ctx: JobContext, candidate: str) -> dict[str, Any] | None:
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
    except Exception:  # a missing or unreadable file means a cold start, said in the log
        log.warning("could not load %s for a warm start; training from scratch", key, exc_info=True)
        return None


def local_weights(ctx: JobContext, key: str, sha256: str) -> Path:
    """A trained version's weights as a local file (fetched from the store once per machine)."""
    path = Path(ctx.settings.data_dir) / "cache" / "weights" / f"{sha256}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(ctx.store.get(key))
        tmp.replace(path)
    return path
