"""Stimulus batches: built by the worker, published atomically, pulled and reported by rigs.

A batch is ``building`` (invisible to rigs) until :func:`publish` checks every image
object exists and freezes the manifest in the same transaction that flips the state,
so a rig sees either no batch or a complete one, and a published manifest never changes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, defer

from itloop.storage import ObjectStore, get_store, image_key
from server.auth.cache import Principal
from server.auth.tables import Role
from server.batches import display
from server.batches.tables import Batch, BatchImage, BatchState, SequenceItem
from server.db.base import as_utc, utcnow
from server.errors import Conflict, Forbidden, InvalidInput, NotFound
from server.images.tables import Image
from server.lab.service import get_rig
from server.lab.tables import Rig
from server.modeling.tables import ModelVersion
from server.recordings.tables import RigEvent

ROLES = ("clean", "reference", "perturbed", "targeted", "random")
VISIBLE = (BatchState.published,)
EVENT_CHUNK = 500
EVENT_FIELDS = ("seq", "image_sha256", "onset_s", "fixation_ok")  # an event's content besides its id
MANIFEST_CACHE_SIZE = 32
_manifest_cache: OrderedDict[tuple[int, str, datetime | None, str], tuple[bytes, str]] = OrderedDict()
_manifest_lock = threading.Lock()


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
        if role not in ROLES:
            raise InvalidInput(
                f"image {image.sha256}: unknown role {role!r}; expected one of {', '.join(ROLES)}"
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


def _build_manifest(*, session: Session, batch: Batch, published_at: datetime) -> dict[str, Any]:
    """The manifest as frozen at publication (image URLs relative to the server root)."""
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
    return {
        "batch_id": batch.batch_id,
        "rig_id": rig_id,
        "published_at": published_at.isoformat(),
        "model_version": version,
        "day": batch.day,
        "notes": batch.notes,
        "images": [
            {
                "sha256": r.sha256,
                "url": f"/api/v1/images/{r.sha256}",
                "width": r.width,
                "height": r.height,
                "bytes": r.n_bytes,
            }
            for r in image_rows
        ],
        "sequence": [
            {
                "seq": s.seq,
                "image_sha256": sha_of[s.image_id],
                "trial": s.trial,
                "on_ms": s.on_ms,
                "off_ms": s.off_ms,
            }
            for s in seq_rows
        ],
        "display": display.geometry(dict(screen or {}), image_px),
    }


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
    manifest = _build_manifest(session=session, batch=batch, published_at=now)
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


def get_batch(*, session: Session, batch_id: str) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.batch_id == batch_id))
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    return batch


def get_published(*, session: Session, batch_id: str, with_manifest: bool = True) -> Batch:
    """A batch a rig may see; building, failed and withdrawn batches are NotFound to it.

    ``with_manifest=False`` leaves the (large) manifest column unloaded until touched.
    """
    query = select(Batch).where(Batch.batch_id == batch_id)
    if not with_manifest:
        query = query.options(defer(Batch.manifest))
    batch = session.scalar(query)
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    _check_visible(batch_id, batch.state, batch.published_at)
    return batch


def _check_visible(batch_id: str, state: str, published_at: datetime | None) -> None:
    if state not in VISIBLE or published_at is None:
        raise NotFound(f"batch {batch_id!r} is not published (state {state})")


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
    _check_visible(batch_id, state, published_at)
    hit = _cached_manifest(_manifest_key(pk, batch_id, published_at, public_base_url))
    if hit is not None:
        return hit
    return manifest_json(batch=session.get_one(Batch, pk), public_base_url=public_base_url)


def authorize_rig(*, actor: Principal, rig_id: str, what: str = "") -> None:
    """A rig token acts only for its own rig: the rig whose ``rig_id`` is the token user's name.

    One rig account per rig (``itloop users create <rig_id> --role rig``), so a token taken
    from one stimulus PC cannot report presentations for, complete, or pull the batches of
    another. People's tokens (experimenter, admin) are not rig-bound; the route's role check
    decides what they may do.
    """
    if actor.role == Role.rig and actor.name != rig_id:
        raise Forbidden(
            f"this token belongs to rig account {actor.name!r} and acts only for rig {actor.name!r}, "
            f"not rig {rig_id!r}{what}; give each rig a user named after its rig_id"
        )


def rig_of(*, session: Session, batch: Batch) -> str:
    """The ``rig_id`` a batch was made for."""
    return session.scalar(select(Rig.rig_id).where(Rig.id == batch.rig_pk)) or ""


def next_for_rig(*, session: Session, rig_id: str, actor: Principal | None = None) -> Batch | None:
    """The rig's newest published batch, or None when there is none or the rig completed it.

    Only the newest counts: once a newer batch is published, older ones are superseded, so a
    rig that completed today's batch is not sent back to an unfinished older one. ``actor``
    (the caller) must be allowed to act for the rig (:func:`authorize_rig`).
    """
    rig = get_rig(session=session, rig_id=rig_id)
    if actor is not None:
        authorize_rig(actor=actor, rig_id=rig_id)
    newest = session.scalar(
        select(Batch)
        .where(Batch.rig_pk == rig.id, Batch.state.in_(VISIBLE))
        .order_by(Batch.published_at.desc(), Batch.id.desc())
        .limit(1)
        .options(defer(Batch.manifest))
    )
    if newest is None or newest.completed_at is not None:
        return None
    if newest.pulled_at is None and actor is not None and actor.role == "rig":
        # Only the first pull writes (one UPDATE per batch); people looking do not count.
        newest.pulled_at = utcnow()
        session.flush()
    return newest


def complete(*, session: Session, batch_id: str, actor: Principal | None = None) -> Batch:
    """Mark a published batch completed by its rig; repeating it keeps the first time.

    ``actor`` (the caller) must be allowed to act for the batch's rig (:func:`authorize_rig`).
    """
    batch = get_published(session=session, batch_id=batch_id, with_manifest=False)
    if actor is not None:
        authorize_rig(actor=actor, rig_id=rig_of(session=session, batch=batch), what=f" (batch {batch_id!r})")
    if batch.completed_at is None:
        batch.completed_at = utcnow()
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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    n_images = (
        select(func.count()).select_from(BatchImage).where(BatchImage.batch_pk == Batch.id).scalar_subquery()
    )
    n_seq = (
        select(func.count())
        .select_from(SequenceItem)
        .where(SequenceItem.batch_pk == Batch.id)
        .scalar_subquery()
    )
    rows = session.execute(
        query.add_columns(n_images, n_seq)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    keys = ("batch", "rig_id", "model_version", "n_images", "n_sequence")
    return [dict(zip(keys, row, strict=True)) for row in rows], total


def check_events(*, batch: Batch, events: Sequence[dict[str, Any]]) -> list[str]:
    """Problems with presentation events against the batch's frozen manifest, one string per item."""
    assert batch.manifest is not None
    shas = {img["sha256"] for img in batch.manifest["images"]}
    seq_image = {s["seq"]: s["image_sha256"] for s in batch.manifest["sequence"]}
    problems = []
    for i, ev in enumerate(events):
        sha = ev["image_sha256"]
        if sha not in shas:
            problems.append(f"item {i}: image_sha256 {sha} is not an image of batch {batch.batch_id!r}")
        elif ev.get("seq") is not None:
            expected = seq_image.get(ev["seq"])
            if expected is None:
                problems.append(f"item {i}: seq {ev['seq']} is not in the batch's sequence")
            elif expected != sha:
                problems.append(f"item {i}: seq {ev['seq']} shows image {expected}, not {sha}")
    return problems


def record_presentations(
    *,
    session: Session,
    batch_id: str,
    events: Sequence[dict[str, Any]],
    actor: Principal | None = None,
) -> dict[str, int]:
    """Store the rig's presentation events, idempotent by ``event_id``.

    Every item is validated first; one bad item stores nothing. Repeated events (already
    stored, or twice in this request) with the same content are counted and ignored; an
    ``event_id`` repeated with different content (image, seq, onset or fixation) is a 409 and
    stores nothing: an event id names one presentation, and silently keeping either version
    would lose the other. Returns ``{"received", "new", "repeated"}``. ``actor`` (the caller)
    must be allowed to act for the batch's rig (:func:`authorize_rig`).
    """
    batch = get_published(session=session, batch_id=batch_id)
    if actor is not None:
        authorize_rig(actor=actor, rig_id=rig_of(session=session, batch=batch), what=f" (batch {batch_id!r})")
    problems = check_events(batch=batch, events=events)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidInput("; ".join(problems[:5]) + more, errors=problems[:100])
    dialect = session.get_bind().dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    new = 0
    rows = [
        {
            "batch_pk": batch.id,
            "event_id": ev["event_id"],
            "seq": ev.get("seq"),
            "image_sha256": ev["image_sha256"],
            "onset_s": float(ev["onset_s"]),
            "fixation_ok": bool(ev.get("fixation_ok", True)),
            "received_at": now,
        }
        for ev in events
    ]
    sent: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        content = _event_content(row)
        first = sent.setdefault(row["event_id"], content)
        if first != content:
            raise Conflict(_differs(row["event_id"], first, content, "earlier in this request"))
    inserted: set[str] = set()
    for start in range(0, len(rows), EVENT_CHUNK):
        chunk = rows[start : start + EVENT_CHUNK]
        stmt = (
            insert_fn(RigEvent)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["batch_pk", "event_id"])
            .returning(RigEvent.event_id)
        )
        inserted.update(session.scalars(stmt).all())
    new = len(inserted)
    _check_repeats(session=session, batch=batch, sent=sent, inserted=inserted)
    return {"received": len(rows), "new": new, "repeated": len(rows) - new}


def _event_content(row: dict[str, Any]) -> tuple[Any, ...]:
    """What an event says, the part that must match when its ``event_id`` comes again."""
    seq = row.get("seq")
    return (
        None if seq is None else int(seq),
        row["image_sha256"],
        float(row["onset_s"]),
        bool(row.get("fixation_ok", True)),
    )


def _differs(event_id: str, stored: tuple[Any, ...], sent: tuple[Any, ...], where: str) -> str:
    pairs = zip(EVENT_FIELDS, stored, sent, strict=True)
    diffs = ", ".join(f"{f} {a!r} vs {b!r}" for f, a, b in pairs if a != b)
    return (
        f"event_id {event_id[:120]!r} was already sent {where} with different content ({diffs}); an "
        "event_id names one presentation, so nothing of this request was stored"
    )


def _check_repeats(
    *, session: Session, batch: Batch, sent: dict[str, tuple[Any, ...]], inserted: set[str]
) -> None:
    """Conflict if an event id that was already stored comes with different content."""
    repeats = [e for e in sent if e not in inserted]
    for start in range(0, len(repeats), EVENT_CHUNK):
        chunk = repeats[start : start + EVENT_CHUNK]
        stored = session.execute(
            select(
                RigEvent.event_id, RigEvent.seq, RigEvent.image_sha256, RigEvent.onset_s, RigEvent.fixation_ok
            ).where(RigEvent.batch_pk == batch.id, RigEvent.event_id.in_(chunk))
        )
        for event_id, *content in stored:
            have = _event_content(dict(zip(EVENT_FIELDS, content, strict=True)))
            if have != sent[event_id]:
                raise Conflict(_differs(event_id, have, sent[event_id], "to this batch"))


def count_events(*, session: Session, batch: Batch) -> int:
    return (
        session.scalar(select(func.count()).select_from(RigEvent).where(RigEvent.batch_pk == batch.id)) or 0
    )
