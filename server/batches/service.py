"""Stimulus batches: built by the worker, published atomically, pulled and reported by rigs.

A batch is ``building`` (invisible to rigs) until :func:`publish` checks every image
object exists and freezes the manifest in the same transaction that flips the state,
so a rig sees either no batch or a complete one, and a published manifest never changes.

This module holds a batch's life (create, publish, withdraw, list) and re-exports the rest,
one idea per module: :mod:`server.batches.manifest` (the frozen manifest and its cache),
:mod:`server.batches.rig_access` (what a rig may see and do), :mod:`server.batches.events`
(the rig's presentation events).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from itloop.storage import ObjectStore, get_store, image_key
from server.batches.events import EVENT_CHUNK, EVENT_FIELDS, check_events, count_events, record_presentations
from server.batches.manifest import (
    MANIFEST_CACHE_SIZE,
    build_manifest,
    get_manifest,
    manifest_json,
    published_manifest_json,
    render_manifest,
)
from server.batches.rig_access import (
    VISIBLE,
    authorize_rig,
    check_visible,
    complete,
    get_published,
    next_for_rig,
    rig_of,
)
from server.batches.tables import Batch, BatchImage, BatchState, SequenceItem
from server.db.base import utcnow
from server.db.paging import paginate
from server.images.tables import Image, ImageKind
from server.lab.service import get_rig
from server.lab.tables import Rig
from server.modeling.tables import ModelVersion

__all__ = [
    "EVENT_CHUNK",
    "EVENT_FIELDS",
    "MANIFEST_CACHE_SIZE",
    "VISIBLE",
    "authorize_rig",
    "check_events",
    "check_visible",
    "complete",
    "count_events",
    "create_batch",
    "get_manifest",
    "get_published",
    "list_batches",
    "manifest_json",
    "next_for_rig",
    "publish",
    "published_manifest_json",
    "record_presentations",
    "render_manifest",
    "rig_of",
    "withdraw",
]


def create_batch(
    *,
    session: Session,
    rig_id: str,
    batch_id: str,
    day: int,
    model_version_id: int | None,
    images: list[tuple[Image, str]],
    sequence: list[dict[str, Any]],
    notes: str = "",
) -> Batch:
    """Create a batch in state ``building``: its images with roles and its RSVP sequence.

    ``sequence`` items have keys ``seq, image_id, trial, on_ms, off_ms``; every
    ``image_id`` must be one of ``images`` and ``seq`` values must be distinct.
    """
    rig = get_rig(session=session, rig_id=rig_id)
    if not batch_id or len(batch_id) > 120:
        raise InvalidInput("batch_id must be 1 to 120 characters")
    if session.scalar(select(Batch.id).where(Batch.batch_id == batch_id)) is not None:
        raise Conflict(f"batch {batch_id!r} already exists")
    if not images:
        raise InvalidInput("a batch needs at least one image")
    roles: dict[int, str] = {}
    for image, role in images:
        if role not in ImageKind.__members__:
            raise InvalidInput(
                f"image {image.sha256}: unknown role {role!r}; expected one of {', '.join(ImageKind)}"
            )
        if image.id is None:
            raise InvalidInput(f"image {image.sha256} is not flushed to the database")
        roles.setdefault(image.id, role)
    rows = []
    seen_seq: set[int] = set()
    for i, item in enumerate(sequence):
        try:
            seq, image_id, trial = int(item["seq"]), int(item["image_id"]), int(item["trial"])
            on_ms, off_ms = int(item.get("on_ms", 100)), int(item.get("off_ms", 100))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(
                f"sequence item {i}: needs integer seq, image_id, trial, on_ms, off_ms ({exc})"
            ) from None
        if image_id not in roles:
            raise InvalidInput(f"sequence item {i}: image_id {image_id} is not one of the batch's images")
        if seq in seen_seq:
            raise InvalidInput(f"sequence item {i}: seq {seq} appears twice")
        if on_ms <= 0 or off_ms < 0:
            raise InvalidInput(f"sequence item {i}: on_ms must be > 0 and off_ms >= 0")
        seen_seq.add(seq)
        rows.append({"seq": seq, "image_id": image_id, "trial": trial, "on_ms": on_ms, "off_ms": off_ms})
    batch = Batch(
        batch_id=batch_id,
        rig_pk=rig.id,
        day=day,
        state=BatchState.building,
        model_version_id=model_version_id,
        notes=notes,
    )
    session.add(batch)
    session.flush()
    session.add_all(BatchImage(batch_pk=batch.id, image_id=i, role=r) for i, r in roles.items())
    session.add_all(SequenceItem(batch_pk=batch.id, **row) for row in rows)
    session.flush()
    return batch


def publish(*, session: Session, batch: Batch, store: ObjectStore | None = None) -> Batch:
    """Freeze the manifest and make the batch visible to its rig, all in the caller's transaction.

    Refuses (Conflict) a batch that is not building, and (NotFound) one whose images
    are missing from the store, so a rig never receives a manifest it cannot fetch.
    """
    if batch.state != BatchState.building:
        raise Conflict(f"batch {batch.batch_id!r} is {batch.state}; only a building batch can be published")
    store = store or get_store()
    shas = session.scalars(
        select(Image.sha256)
        .join(BatchImage, BatchImage.image_id == Image.id)
        .where(BatchImage.batch_pk == batch.id)
    ).all()
    missing = [s for s in shas if not store.exists(image_key(s))]
    if missing:
        raise NotFound(
            f"batch {batch.batch_id!r}: {len(missing)} image objects are missing from the store "
            f"(first: {missing[0]}); not published"
        )
    now = utcnow()
    manifest = build_manifest(session=session, batch=batch, published_at=now)
    # Conditional update: of two concurrent publishers, exactly one wins.
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.state == BatchState.building)
        .values(state=BatchState.published, published_at=now, manifest=manifest)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"batch {batch.batch_id!r} was published or changed concurrently")
    session.refresh(batch)
    return batch


def withdraw(*, session: Session, batch: Batch, reason: str = "") -> Batch:
    """Hide a batch from rigs (its manifest stays frozen for the record)."""
    batch.state = BatchState.withdrawn
    if reason:
        batch.notes = (batch.notes + "\n" if batch.notes else "") + f"withdrawn: {reason}"
    session.flush()
    return batch


def list_batches(
    *,
    session: Session,
    rig_id: str | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Batches newest first, each as ``{"batch", "rig_id", "model_version", "n_images", "n_sequence"}``."""
    query = (
        select(Batch, Rig.rig_id, ModelVersion.version)
        .join(Rig, Rig.id == Batch.rig_pk)
        .outerjoin(ModelVersion, ModelVersion.id == Batch.model_version_id)
    )
    if rig_id is not None:
        query = query.where(Rig.rig_id == rig_id)
    if state is not None:
        query = query.where(Batch.state == state)
    n_images = (
        select(func.count()).select_from(BatchImage).where(BatchImage.batch_pk == Batch.id).scalar_subquery()
    )
    n_seq = (
        select(func.count())
        .select_from(SequenceItem)
        .where(SequenceItem.batch_pk == Batch.id)
        .scalar_subquery()
    )
    order = [Batch.created_at.desc(), Batch.id.desc()]
    rows, total = paginate(
        session, query, order_by=order, limit=limit, offset=offset, columns=[n_images, n_seq]
    )
    keys = ("batch", "rig_id", "model_version", "n_images", "n_sequence")
    return [dict(zip(keys, row, strict=True)) for row in rows], total
