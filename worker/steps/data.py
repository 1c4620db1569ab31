"""The bridge between database rows and the arrays the science code reads.

Only the worker joins SQL and tensors; these helpers keep that join in one place.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import InvalidInput
from server.images import service as image_service
from server.images.tables import Image
from server.lab.tables import Site
from server.recordings.queries import ResponseTable, responses_by_image
from server.recordings.tables import Presentation, RecordingSession

if TYPE_CHECKING:
    import torch

    from itloop.storage import ObjectStore
    from worker.steps.candidates import Candidate


def images_by_id(session: Session, ids: list[int]) -> list[Image]:
    rows = {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise InvalidInput(f"unknown image ids {missing[:5]}")
    return [rows[i] for i in ids]


def images_by_sha(session: Session, shas: list[str]) -> list[Image]:
    rows = {im.sha256: im for im in session.scalars(select(Image).where(Image.sha256.in_(shas)))}
    return [rows[s] for s in shas]


def pixels(store: ObjectStore, images: list[Image]) -> torch.Tensor:
    """Images as float32 in [0, 1], shape (N, 3, H, W); all must share one size."""
    import torch

    arrays = [image_service.load_pixels(store=store, image=im) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InvalidInput(f"images of one night must share a size; found {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).float().div_(255.0)


def site_pks(session: Session, site_ids: list[str]) -> dict[str, int]:
    return dict(session.execute(select(Site.site_id, Site.id).where(Site.site_id.in_(site_ids))).all())


@dataclass
class TrainingSet:
    """Repeat-averaged responses of today's sites to every image seen so far."""

    images: list[Image]
    site_ids: list[str]
    mean: np.ndarray  # (n_images, n_sites)
    today: ResponseTable
    sessions: list[str]


def training_set(
    session: Session,
    rec: RecordingSession,
    window_ms: tuple[float, float] | None,
    train_days: int | None = None,
) -> TrainingSet:
    """Pool every day of this subject up to ``rec`` (chronic sites keep their ids across days)."""
    today = responses_by_image(session=session, session_pk=rec.id, window_ms=window_ms)
    if not today.trials:
        raise InvalidInput(f"session {rec.session_id!r} has no responses; upload its spikes first")
    query = select(RecordingSession).where(
        RecordingSession.subject_id == rec.subject_id, RecordingSession.day <= rec.day
    )
    if train_days is not None:
        query = query.where(RecordingSession.day > rec.day - train_days)
    sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(today.site_ids)))
    counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(today.site_ids)))
    used = []
    for other in session.scalars(query.order_by(RecordingSession.day, RecordingSession.id)):
        has_data = session.scalar(select(Presentation.id).where(Presentation.session_pk == other.id).limit(1))
        if has_data is None:
            continue
        table = (
            today
            if other.id == rec.id
            else responses_by_image(session=session, session_pk=other.id, window_ms=window_ms)
        )
        cols = [table.site_ids.index(s) if s in table.site_ids else -1 for s in today.site_ids]
        for image_id, trials in zip(table.image_ids, table.trials, strict=True):
            for j, c in enumerate(cols):
                if c >= 0:
                    sums[image_id][j] += trials[:, c].sum()
                    counts[image_id][j] += len(trials)
        used.append(other.session_id)
    ids = sorted(i for i in sums if np.all(counts[i] > 0))
    mean = np.stack([sums[i] / counts[i] for i in ids]) if ids else np.empty((0, len(today.site_ids)))
    return TrainingSet(images_by_id(session, ids), list(today.site_ids), mean, today, used)


def features(
    store: ObjectStore,
    cache_root: Any,
    candidate: Candidate,
    backbone: Any,
    checkpoint_sha: str | None,
    images: list[Image],
    device: str,
) -> np.ndarray:
    """Features of ``images`` for a candidate, cached per (backbone, weights, layer, image hash)."""
    from models.features import FeatureCache, FeatureExtractor, FeatureKey

    key = FeatureKey(candidate.backbone, checkpoint_sha, candidate.layer, candidate.pool, candidate.kwargs)
    cache = FeatureCache(cache_root)
    shas = [im.sha256 for im in images]
    todo = cache.missing(key, shas)
    extractor = FeatureExtractor(backbone, candidate.layer, candidate.pool)
    if todo:
        batch = pixels(store, [images[i] for i in todo]).to(device)
        feats = extractor.extract(batch, batch_size=64).cpu().numpy()
        for row, i in zip(feats, todo, strict=True):
            cache.put(key, shas[i], row)
    return np.stack([cache.get(key, h) for h in shas]).astype(np.float64)  # type: ignore[misc]
