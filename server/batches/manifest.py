"""A batch's manifest: frozen at publication, rendered for the rig, cached per process.

The manifest is built once, in the transaction that publishes the batch, and never changes
afterwards; that is what makes the per-process cache of its rendered JSON safe. Visibility
is still checked on every request (:mod:`server.batches.rig_access`), so a withdrawn batch
disappears at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import NotFound
from server.batches import display
from server.batches.rig_access import check_visible, get_published
from server.batches.schemas import Display, Manifest, ManifestImage, ManifestItem
from server.batches.tables import Batch, BatchImage, SequenceItem
from server.db.base import as_utc
from server.images.tables import Image
from server.lab.tables import Rig
from server.modeling.tables import ModelVersion
from server.urls import image_url

MANIFEST_CACHE_SIZE = 32
_manifest_cache: OrderedDict[tuple[int, str, datetime | None, str], tuple[bytes, str]] = OrderedDict()
_manifest_lock = threading.Lock()


def build_manifest(*, session: Session, batch: Batch, published_at: datetime) -> dict[str, Any]:
    """The manifest as frozen at publication, built from its model (image URLs relative to the root)."""
    rig_id, screen = session.execute(select(Rig.rig_id, Rig.screen).where(Rig.id == batch.rig_pk)).one()
    version = (
        session.scalar(select(ModelVersion.version).where(ModelVersion.id == batch.model_version_id))
        if batch.model_version_id
        else None
    )
    image_rows = session.execute(
        select(Image.id, Image.sha256, Image.width, Image.height, Image.n_bytes)
        .join(BatchImage, BatchImage.image_id == Image.id)
        .where(BatchImage.batch_pk == batch.id)
        .order_by(Image.sha256)
    ).all()
    sha_of = {r.id: r.sha256 for r in image_rows}
    sizes = {(r.width, r.height) for r in image_rows}
    image_px = list(next(iter(sizes))) if len(sizes) == 1 else None
    seq_rows = session.execute(
        select(
            SequenceItem.seq,
            SequenceItem.image_id,
            SequenceItem.trial,
            SequenceItem.on_ms,
            SequenceItem.off_ms,
        )
        .where(SequenceItem.batch_pk == batch.id)
        .order_by(SequenceItem.seq)
    ).all()
    manifest = Manifest(
        batch_id=batch.batch_id,
        rig_id=rig_id or "",
        published_at=published_at,
        model_version=version,
        day=batch.day,
        notes=batch.notes,
        images=[
            ManifestImage(
                sha256=r.sha256, url=image_url(r.sha256), width=r.width, height=r.height, bytes=r.n_bytes
            )
            for r in image_rows
        ],
        sequence=[
            ManifestItem(
                seq=s.seq, image_sha256=sha_of[s.image_id], trial=s.trial, on_ms=s.on_ms, off_ms=s.off_ms
            )
            for s in seq_rows
        ],
        display=Display.model_validate(display.geometry(dict(screen or {}), image_px)),
    )
    return manifest.model_dump(mode="json")


def render_manifest(manifest: dict[str, Any], public_base_url: str = "") -> dict[str, Any]:
    """The frozen manifest with image URLs made absolute when a public base URL is configured."""
    base = public_base_url.rstrip("/")
    if not base:
        return manifest
    images = [{**img, "url": base + img["url"]} for img in manifest["images"]]
    return {**manifest, "images": images}


def get_manifest(*, session: Session, batch_id: str, public_base_url: str = "") -> dict[str, Any]:
    """The published manifest of a batch (DESIGN.md section 5)."""
    batch = get_published(session=session, batch_id=batch_id)
    assert batch.manifest is not None
    return render_manifest(batch.manifest, public_base_url)


def _manifest_key(
    pk: int, batch_id: str, published_at: datetime | None, public_base_url: str
) -> tuple[int, str, datetime | None, str]:
    # SQLite hands core selects naive datetimes (ORM loads are tagged UTC): one key for both
    return (pk, batch_id, None if published_at is None else as_utc(published_at), public_base_url)


def _cached_manifest(key: tuple[int, str, datetime | None, str]) -> tuple[bytes, str] | None:
    with _manifest_lock:
        hit = _manifest_cache.get(key)
        if hit is not None:
            _manifest_cache.move_to_end(key)
        return hit


def manifest_json(*, batch: Batch, public_base_url: str = "") -> tuple[bytes, str]:
    """The rendered manifest as compact JSON bytes and its entity tag, cached per process.

    Safe to cache: a published manifest never changes. Visibility is still checked by
    the caller on every request, so a withdrawn batch disappears at once.
    """
    key = _manifest_key(batch.id, batch.batch_id, batch.published_at, public_base_url)
    hit = _cached_manifest(key)
    if hit is not None:
        return hit
    assert batch.manifest is not None
    body = json.dumps(render_manifest(batch.manifest, public_base_url), separators=(",", ":")).encode()
    entry = (body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    with _manifest_lock:
        _manifest_cache[key] = entry
        while len(_manifest_cache) > MANIFEST_CACHE_SIZE:
            _manifest_cache.popitem(last=False)
    return entry


def published_manifest_json(
    *, session: Session, batch_id: str, public_base_url: str = ""
) -> tuple[bytes, str]:
    """The manifest GET's work: visibility read on every call, the body cached per process.

    A core select of four columns rather than an ORM load (the hot path of a rig's poll);
    the manifest column itself is read only when this process has not rendered it yet.
    """
    row = session.execute(
        select(Batch.id, Batch.state, Batch.published_at).where(Batch.batch_id == batch_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no batch {batch_id!r}")
    pk, state, published_at = row
    check_visible(batch_id, state, published_at)
    hit = _cached_manifest(_manifest_key(pk, batch_id, published_at, public_base_url))
    if hit is not None:
        return hit
    return manifest_json(batch=session.get_one(Batch, pk), public_base_url=public_base_url)
