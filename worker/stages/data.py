"""The bridge between database rows and the arrays the science code reads.

Only the worker joins SQL and tensors; these helpers keep that join in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import InvalidInput
from server.images import service as image_service
from server.images.tables import Image
from server.lab.tables import Site

if TYPE_CHECKING:
    import torch

    from itloop.storage import ObjectStore
    from worker.candidates import Candidate


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
    return {
        sid: pk
        for sid, pk in session.execute(select(Site.site_id, Site.id).where(Site.site_id.in_(site_ids)))
    }


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
    from models.backbones import backbone_revision
    from models.features import FeatureCache, FeatureExtractor, FeatureKey

    key = FeatureKey(
        candidate.backbone,
        checkpoint_sha,
        candidate.layer,
        candidate.pool,
        candidate.kwargs,
        revision=backbone_revision(candidate.backbone),
    )
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
