"""Recording sessions themselves: create (idempotent), read, list, complete, describe for the API.

A session is one recording day of one subject; its spike data arrive later by upload
(:mod:`server.recordings.store`). Its ``meta`` is the lab's own, except the reserved key
:data:`INGEST_KEY`, where ingest records what it did; its NWB fields are kept for the export.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from server.batches.tables import Batch
from server.db.base import utcnow
from server.db.paging import paginate
from server.lab.tables import Rig, Subject
from server.recordings.tables import RecordingSession

INGEST_KEY = "_ingest"  # reserved key in RecordingSession.meta for what ingest recorded


class SessionState(StrEnum):
    open = "open"
    complete = "complete"


# --- sessions ---------------------------------------------------------------------------


def get_session(*, session: Session, session_id: str) -> RecordingSession:
    rec = session.scalar(select(RecordingSession).where(RecordingSession.session_id == session_id))
    if rec is None:
        raise NotFound(f"no recording session {session_id!r}")
    return rec


def get_by_pk(*, session: Session, session_pk: int) -> RecordingSession:
    rec = session.get(RecordingSession, session_pk)
    if rec is None:
        raise NotFound(f"no recording session with id {session_pk}")
    return rec


def user_meta(rec: RecordingSession) -> dict[str, Any]:
    """The lab's own meta: everything but what ingest recorded under :data:`INGEST_KEY`."""
    return {k: v for k, v in (rec.meta or {}).items() if k != INGEST_KEY}


NWB_FIELDS = ("description", "experimenter", "institution", "lab", "keywords")
SUBJECT_FIELDS = ("age", "weight")  # the subject on this day: acquisition["subject"]


def nwb_fields(rec: RecordingSession) -> dict[str, Any]:
    """The session's NWB metadata as the API shows it (see :class:`SessionBase`)."""
    acq_subject = (rec.acquisition or {}).get("subject", {})
    return {
        "session_start_time": rec.session_start_time,
        **{k: getattr(rec, k) for k in NWB_FIELDS},
        **{f"subject_{k}": acq_subject.get(k, "") for k in SUBJECT_FIELDS},
    }


def describe(*, session: Session, rec: RecordingSession) -> dict[str, Any]:
    """The public fields of a session (names, not keys)."""
    subject = session.get(Subject, rec.subject_id)
    rig = session.get(Rig, rec.rig_pk) if rec.rig_pk else None
    batch = session.get(Batch, rec.batch_pk) if rec.batch_pk else None
    return {
        "session_id": rec.session_id,
        "subject": subject.name if subject else "",
        "rig_id": rig.rig_id if rig else None,
        "batch_id": batch.batch_id if batch else None,
        "day": rec.day,
        "meta": user_meta(rec),
        "state": rec.state,
        "duration_s": rec.duration_s,
        "has_data": rec.upload_sha256 is not None,
        "created_at": rec.created_at,
        "completed_at": rec.completed_at,
        "ingest": (rec.meta or {}).get(INGEST_KEY, {}),
        **nwb_fields(rec),
    }


def create_session(
    *,
    session: Session,
    session_id: str,
    subject: str,
    rig_id: str | None = None,
    batch_id: str | None = None,
    day: int | None = None,
    meta: dict[str, Any] | None = None,
    session_start_time: datetime | None = None,
    description: str = "",
    experimenter: list[str] | None = None,
    institution: str = "",
    lab: str = "",
    keywords: list[str] | None = None,
    subject_age: str = "",
    subject_weight: str = "",
) -> tuple[RecordingSession, bool]:
    """Create a session; an identical body returns the existing one (created=False), else 409.

    The NWB fields (start time with its offset, description, experimenter, institution, lab,
    keywords, the subject's age and weight on the day) are written back by the NWB export.
    """
    nwb = {
        "session_start_time": session_start_time.isoformat() if session_start_time else None,
        "description": description,
        "experimenter": list(experimenter or []),
        "institution": institution,
        "lab": lab,
        "keywords": list(keywords or []),
    }
    day_subject = {k: v for k, v in (("age", subject_age), ("weight", subject_weight)) if v}
    if meta and INGEST_KEY in meta:
        raise InvalidInput(f"meta key {INGEST_KEY!r} is reserved")
    subj = session.scalar(select(Subject).where(Subject.name == subject))
    if subj is None:
        raise InvalidInput(f"unknown subject {subject!r}; create it first")
    rig = None
    if rig_id is not None:
        rig = session.scalar(select(Rig).where(Rig.rig_id == rig_id))
        if rig is None:
            raise InvalidInput(f"unknown rig {rig_id!r}")
    batch = None
    if batch_id is not None:
        batch = session.scalar(select(Batch).where(Batch.batch_id == batch_id))
        if batch is None:
            raise InvalidInput(f"unknown batch {batch_id!r}")
    day_value = day if day is not None else (batch.day if batch is not None else 0)
    existing = session.scalar(select(RecordingSession).where(RecordingSession.session_id == session_id))
    if existing is not None:
        same = (
            existing.subject_id == subj.id
            and existing.rig_pk == (rig.id if rig else None)
            and existing.batch_pk == (batch.id if batch else None)
            and existing.day == day_value
            and user_meta(existing) == (meta or {})
            # NWB fields the body leaves empty match anything: an NWB upload may have filled them
            and all(not v or getattr(existing, k) == v for k, v in nwb.items())
            and all(
                (existing.acquisition or {}).get("subject", {}).get(k) == v for k, v in day_subject.items()
            )
        )
        if not same:
            raise Conflict(f"session {session_id!r} already exists with different fields")
        return existing, False
    rec = RecordingSession(
        session_id=session_id,
        subject_id=subj.id,
        rig_pk=rig.id if rig else None,
        batch_pk=batch.id if batch else None,
        day=day_value,
        meta=dict(meta or {}),
        state=SessionState.open,
        acquisition={"subject": day_subject} if day_subject else {},
        **nwb,
    )
    session.add(rec)
    session.flush()
    return rec, True


def list_sessions(
    *,
    session: Session,
    subject: str | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[RecordingSession], int]:
    """Newest first, filtered by subject name and state."""
    query = select(RecordingSession)
    if subject is not None:
        query = query.join(Subject, Subject.id == RecordingSession.subject_id).where(Subject.name == subject)
    if state is not None:
        query = query.where(RecordingSession.state == state)
    order = [RecordingSession.created_at.desc(), RecordingSession.id.desc()]
    rows, total = paginate(session, query, order_by=order, limit=limit, offset=offset)
    return [r[0] for r in rows], total


def complete_session(*, session: Session, session_id: str) -> RecordingSession:
    """Mark complete (idempotent). Whether a night starts is the route's call (``ITLOOP_AUTO_NIGHT``)."""
    rec = get_session(session=session, session_id=session_id)
    if rec.state == SessionState.complete:
        return rec
    rec.state = SessionState.complete
    rec.completed_at = utcnow()
    session.flush()
    return rec
