"""Content-addressed images: store once by the SHA-256 of their PNG bytes, with lineage.

The object is written to the store before its row is flushed, so a committed row
never points to a missing object; an interrupted write leaves at most an orphan
object that the next ``put_image`` of the same bytes reuses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, InvalidUpload, NotFound
from itloop.sha256 import is_sha256, sha256_hex
from itloop.storage import ObjectStore, image_key
from server.db.base import utcnow
from server.db.paging import paginate
from server.images.png import decode_png, encode_png
from server.images.tables import Image, ImageKind, ImageSet, ImageSetMember

log = logging.getLogger(__name__)

IMAGE_SET_LOCK = 0x17A6E5E7  # pg_advisory_xact_lock key of image-set creation


def check_sha256(sha256: str) -> str:
    """Normalise a hex digest to lower case, or raise InvalidInput naming the problem."""
    value = sha256.strip().lower()
    if not is_sha256(value):
        raise InvalidInput(f"not a SHA-256 hex digest (64 hex characters): {sha256[:80]!r}")
    return value


def put_image(
    *,
    session: Session,
    store: ObjectStore,
    png: bytes,
    kind: str = ImageKind.clean,
    category: str | None = None,
    source_name: str | None = None,
    parent_id: int | None = None,
    model_version_id: int | None = None,
    site_pk: int | None = None,
    epsilon: float | None = None,
    direction: str | None = None,
    seed: int | None = None,
    predicted_change: float | None = None,
    achieved_l2: float | None = None,
    provenance: dict[str, Any] | None = None,
) -> Image:
    """Store PNG bytes once and return their row; the same bytes give the same row.

    The first writer's lineage wins: identical bytes produced twice are one image.
    """
    if kind not in ImageKind.__members__:
        raise InvalidInput(f"unknown image kind {kind!r}; expected one of {', '.join(ImageKind)}")
    sha = sha256_hex(png)
    key = image_key(sha)
    existing = session.scalar(select(Image).where(Image.sha256 == sha))
    if existing is not None:
        if not store.exists(key):  # heal a store that lost the object
            log.warning("image %s had a row but no object; rewriting it", sha)
            store.put(key, png)
        return existing
    pixels = decode_png(png)
    store.put(key, png)
    row = Image(
        sha256=sha,
        width=int(pixels.shape[2]),
        height=int(pixels.shape[1]),
        n_bytes=len(png),
        kind=kind,
        category=category,
        source_name=source_name,
        parent_id=parent_id,
        model_version_id=model_version_id,
        site_pk=site_pk,
        epsilon=epsilon,
        direction=direction,
        seed=seed,
        predicted_change=predicted_change,
        achieved_l2=achieved_l2,
        provenance=dict(provenance or {}),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # Another writer inserted the same bytes between our select and insert.
        found = session.scalar(select(Image).where(Image.sha256 == sha))
        if found is None:
            raise
        return found
    return row


def put_pixels(*, session: Session, store: ObjectStore, pixels: np.ndarray, **lineage: Any) -> Image:
    """Encode uint8 pixels deterministically and store them (see :func:`put_image`)."""
    return put_image(session=session, store=store, png=encode_png(pixels), **lineage)


def is_registered(*, session: Session, sha256: str) -> bool:
    """Is there an image with this (normalised) hash?"""
    return session.scalar(select(Image.id).where(Image.sha256 == sha256)) is not None


def get_by_hash(*, session: Session, sha256: str) -> Image:
    """The image whose PNG bytes hash to ``sha256``; NotFound otherwise."""
    sha = check_sha256(sha256)
    image = session.scalar(select(Image).where(Image.sha256 == sha))
    if image is None:
        raise NotFound(f"no image with sha256 {sha}")
    return image


def load_png(*, store: ObjectStore, image: Image) -> bytes:
    try:
        return store.get(image_key(image.sha256))
    except KeyError:
        raise NotFound(
            f"image {image.sha256} is registered but its object is missing from the store"
        ) from None


def load_pixels(*, store: ObjectStore, image: Image) -> np.ndarray:
    """The image's pixels as uint8 of shape (3, H, W)."""
    return decode_png(load_png(store=store, image=image))


def lineage(*, session: Session, image: Image) -> dict[str, Any]:
    """Where an image came from: parent, model version, site, epsilon, direction, seed, predictions."""
    from server.lab.tables import Site
    from server.modeling.tables import ModelVersion

    parent = session.get(Image, image.parent_id) if image.parent_id else None
    model = session.get(ModelVersion, image.model_version_id) if image.model_version_id else None
    site = session.get(Site, image.site_pk) if image.site_pk else None
    return {
        "sha256": image.sha256,
        "kind": image.kind,
        "category": image.category,
        "source_name": image.source_name,
        "width": image.width,
        "height": image.height,
        "bytes": image.n_bytes,
        "parent_sha256": parent.sha256 if parent else None,
        "model_version": model.version if model else None,
        "site_id": site.site_id if site else None,
        "epsilon": image.epsilon,
        "direction": image.direction,
        "seed": image.seed,
        "predicted_change": image.predicted_change,
        "achieved_l2": image.achieved_l2,
        "provenance": image.provenance or {},
        "created_at": image.created_at,
    }


def _category_from_name(filename: str) -> str | None:
    """``<category>__<anything>.png`` names the category; anything else names none."""
    stem = filename.rsplit("/", 1)[-1]
    return stem.split("__", 1)[0] if "__" in stem and stem.split("__", 1)[0] else None


def parse_categories(raw: str | None, n_files: int) -> list[str | None] | None:
    """Parse the ``categories`` form field: a JSON list with one entry (or null) per file."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"categories: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise InvalidInput("categories: expected a JSON list of strings (or null), one per file")
    if len(value) != n_files:
        raise InvalidInput(f"categories: {len(value)} entries for {n_files} files")
    return value


def create_image_set(
    *,
    session: Session,
    store: ObjectStore,
    name: str,
    files: Sequence[tuple[str, bytes]],
    categories: Sequence[str | None] | None = None,
    description: str = "",
    is_reference: bool = False,
) -> ImageSet:
    """Create a named set of clean images from PNG files (``(filename, bytes)`` pairs).

    Each upload is decoded strictly and re-encoded canonically, so the same picture saved
    by two tools (different metadata) is one image. Categories come from ``categories`` or
    from file names of the form ``<category>__<name>.png``.
    """
    if not files:
        raise InvalidInput("an image set needs at least one file")
    if session.scalar(select(ImageSet.id).where(ImageSet.name == name)) is not None:
        raise Conflict(f"image set {name!r} already exists; sets are immutable, pick a new name")
    if categories is not None and len(categories) != len(files):
        raise InvalidInput(f"categories: {len(categories)} entries for {len(files)} files")
    canonical = []
    sizes: list[tuple[int, int]] = []
    for i, (filename, data) in enumerate(files):
        try:
            pixels = decode_png(data)
        except InvalidUpload as exc:
            raise InvalidUpload(f"file {i} ({filename!r}): {exc.detail}") from None
        canonical.append(encode_png(pixels))
        sizes.append((int(pixels.shape[2]), int(pixels.shape[1])))
    _lock_image_sets(session)
    check_size(session=session, files=[f for f, _ in files], sizes=sizes)
    kind = ImageKind.reference if is_reference else ImageKind.clean
    image_set = ImageSet(name=name, description=description, is_reference=is_reference)
    session.add(image_set)
    session.flush()
    seen: set[int] = set()
    for position, ((filename, _), png) in enumerate(zip(files, canonical, strict=True)):
        category = categories[position] if categories is not None else _category_from_name(filename)
        image = put_image(
            session=session, store=store, png=png, kind=kind, category=category, source_name=filename
        )
        if image.id in seen:
            continue  # the same picture twice in one upload is one member
        seen.add(image.id)
        session.add(ImageSetMember(image_set_id=image_set.id, image_id=image.id, position=position))
    session.flush()
    return image_set


def _lock_image_sets(session: Session) -> None:
    """Serialise image-set creation, so two first uploads cannot establish two sizes at once.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: the request's write transaction
    (BEGIN IMMEDIATE) already serialises writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": IMAGE_SET_LOCK})


def established_size(*, session: Session) -> tuple[int, int] | None:
    """The lab's image size (width, height): that of the oldest image set not withdrawn, or None.

    Every night stacks clean, reference and perturbed images into one tensor, so the lab has
    one stimulus size; the first set fixes it until every set of that size is withdrawn.
    """
    row = session.execute(
        select(Image.width, Image.height)
        .join(ImageSetMember, ImageSetMember.image_id == Image.id)
        .join(ImageSet, ImageSet.id == ImageSetMember.image_set_id)
        .where(ImageSet.withdrawn_at.is_(None))
        .order_by(ImageSet.id, ImageSetMember.position)
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def check_size(*, session: Session, files: Sequence[str], sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse (422) an upload whose images differ in size from each other or from the lab's.

    Refused, not resized: a resampled stimulus is a different stimulus (blur, aliasing), and
    which resampling is right for an experiment is the experimenter's call, made before upload.
    """
    expected = established_size(session=session)
    what = "the lab's image size (of the image sets already registered)"
    if expected is None:
        expected, what = sizes[0], f"the size of file 0 ({files[0]!r})"
    wrong = [i for i, size in enumerate(sizes) if size != expected]
    if wrong:
        i = wrong[0]
        w, h = sizes[i]
        more = f" (and {len(wrong) - 1} more files)" if len(wrong) > 1 else ""
        raise InvalidUpload(
            f"file {i} ({files[i]!r}) is {w}x{h} pixels{more}; expected {expected[0]}x{expected[1]}, "
            f"{what}. Resize the images to {expected[0]}x{expected[1]} before uploading, or withdraw "
            "the sets of the old size first (POST /image-sets/{name}/withdraw)",
            expected_width=expected[0],
            expected_height=expected[1],
        )


def withdraw_image_set(*, session: Session, name: str, reason: str = "") -> ImageSet:
    """Withdraw a set: later nights and day-0 batches no longer draw from it (idempotent).

    Nothing is deleted: batches already published keep their images, and responses already
    recorded to its images stay data. Withdrawing again keeps the first time and reason.
    """
    image_set = get_image_set(session=session, name=name)
    if image_set.withdrawn_at is None:
        image_set.withdrawn_at = utcnow()
        image_set.withdrawn_reason = reason
        session.flush()
        log.info("image set %r withdrawn: %s", name, reason or "(no reason given)")
    return image_set


def get_image_set(*, session: Session, name: str) -> ImageSet:
    found = session.scalar(select(ImageSet).where(ImageSet.name == name))
    if found is None:
        raise NotFound(f"no image set named {name!r}")
    return found


def set_members(*, session: Session, image_set: ImageSet) -> list[Image]:
    """Members in upload order."""
    query = (
        select(Image)
        .join(ImageSetMember, ImageSetMember.image_id == Image.id)
        .where(ImageSetMember.image_set_id == image_set.id)
        .order_by(ImageSetMember.position)
    )
    return list(session.scalars(query))


def list_image_sets(
    *, session: Session, is_reference: bool | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[tuple[ImageSet, int]], int]:
    """Image sets with their member counts, newest first."""
    query = select(ImageSet)
    if is_reference is not None:
        query = query.where(ImageSet.is_reference.is_(is_reference))
    n = (
        select(func.count())
        .select_from(ImageSetMember)
        .where(ImageSetMember.image_set_id == ImageSet.id)
        .correlate(ImageSet)
        .scalar_subquery()
    )
    order = [ImageSet.created_at.desc(), ImageSet.id.desc()]
    rows, total = paginate(session, query, order_by=order, limit=limit, offset=offset, columns=[n])
    return [(s, int(c)) for s, c in rows], total


def clean_pool(session: Session) -> tuple[list[Image], list[Image]]:
    """(clean images of non-reference sets, reference-set images), each in set order.

    Withdrawn sets are left out (``POST /image-sets/{name}/withdraw``).
    """
    rows = session.execute(
        select(Image, ImageSet.is_reference)
        .join(ImageSetMember, ImageSetMember.image_id == Image.id)
        .join(ImageSet, ImageSet.id == ImageSetMember.image_set_id)
        .where(ImageSet.withdrawn_at.is_(None))
        .order_by(ImageSet.id, ImageSetMember.position, Image.id)
    ).all()
    clean: dict[int, Image] = {}
    reference: dict[int, Image] = {}
    for image, is_ref in rows:
        (reference if is_ref else clean).setdefault(image.id, image)
    return list(clean.values()), list(reference.values())
