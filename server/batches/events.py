"""The rig's presentation events: checked against the frozen manifest, stored idempotently by id.

An ``event_id`` names one presentation: the same id with the same content is a harmless
repeat (a rig retrying after an outage), the same id with other content a 409 that stores
nothing of the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput
from server.auth.cache import Principal
from server.batches.rig_access import authorize_rig, get_published, rig_of
from server.batches.tables import Batch
from server.db.base import utcnow
from server.recordings.tables import RigEvent

EVENT_CHUNK = 500
EVENT_FIELDS = ("seq", "image_sha256", "onset_s", "fixation_ok")  # an event's content besides its id


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
