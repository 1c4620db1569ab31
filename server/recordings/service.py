"""Recording sessions and their spike data: create, list, complete, ingest, responses.

Ingest is all-or-nothing: parse and validate everything (files, then the database's
sites and images) before the first write; writes happen in the caller's transaction, so
any failure rolls all of them back. Identical data uploaded again changes nothing; other
data for a session that already has some is a 409 unless ``replace=True``, which deletes
and re-inserts in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from itloop.settings import get_settings
from server.batches.tables import Batch
from server.db.base import utcnow
from server.errors import Conflict, InvalidInput, InvalidUpload, NotFound
from server.images.tables import Image
from server.lab.tables import Array, Rig, Site, Subject
from server.recordings import hooks
from server.recordings.ingest.copy import insert_columns
from server.recordings.ingest.responses import check_window, count_spikes
from server.recordings.ingest.validate import CleanUpload, ParsedUpload, clean
from server.recordings.queries import ResponseTable, load_trains, responses_by_image
from server.recordings.tables import Presentation, RecordingSession, Response, SpikeTrain

log = logging.getLogger(__name__)

__all__ = [
    "ResponseTable",
    "compute_responses",
    "ingest",
    "ingest_files",
    "load_trains",
    "responses_by_image",
]

INGEST_KEY = "_ingest"  # reserved key in RecordingSession.meta for what ingest recorded


class SessionState:
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


def _user_meta(rec: RecordingSession) -> dict[str, Any]:
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
        "meta": _user_meta(rec),
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
            and _user_meta(existing) == (meta or {})
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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(RecordingSession.created_at.desc(), RecordingSession.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), int(total)


def complete_session(*, session: Session, session_id: str) -> RecordingSession:
    """Mark complete (idempotent); the first completion runs the registered hooks (the night trigger)."""
    rec = get_session(session=session, session_id=session_id)
    if rec.state == SessionState.complete:
        return rec
    rec.state = SessionState.complete
    rec.completed_at = utcnow()
    session.flush()
    hooks.on_session_complete(session, rec)
    return rec


# --- ingest -----------------------------------------------------------------------------


def default_window() -> tuple[float, float]:
    w = get_settings().response_window_ms
    return float(w[0]), float(w[1])


def counts(
    *, session: Session, session_pk: int, window_ms: tuple[float, float] | None = None
) -> dict[str, int]:
    """Stored counts: sites with a train, presentations, spikes, responses in the window."""
    a, b = window_ms or default_window()
    sites, spikes = session.execute(
        select(func.count(SpikeTrain.id), func.coalesce(func.sum(SpikeTrain.n_spikes), 0)).where(
            SpikeTrain.session_pk == session_pk
        )
    ).one()
    pres = session.scalar(select(func.count(Presentation.id)).where(Presentation.session_pk == session_pk))
    resp = session.scalar(
        select(func.count(Response.id)).where(
            Response.session_pk == session_pk, Response.window_start_ms == a, Response.window_end_ms == b
        )
    )
    return {
        "sites": int(sites),
        "presentations": int(pres or 0),
        "spikes": int(spikes),
        "responses": int(resp or 0),
    }


def parse_files(files: dict[str, Path], presentations_table: str | None = None) -> ParsedUpload:
    """Pick the format from the multipart fields present: ``file`` (NWB) or ``spikes`` + ``presentations``.

    ``presentations_table`` names the NWB TimeIntervals table of presentations (default
    ``presentations``); it means nothing for CSV/Parquet, where it is refused.
    """
    from server.recordings.ingest.columnar import read_columnar
    from server.recordings.ingest.nwb import read_nwb

    if "file" in files:
        if "spikes" in files or "presentations" in files:
            raise InvalidUpload(
                "send either one NWB file (field 'file') or 'spikes' and 'presentations', not both"
            )
        return read_nwb(files["file"], table_name=presentations_table or "presentations")
    if presentations_table:
        raise InvalidUpload("presentations_table names a table inside an NWB file; this upload is not NWB")
    if "spikes" in files and "presentations" in files:
        return read_columnar(files["spikes"], files["presentations"])
    got = ", ".join(sorted(files)) or "none"
    raise InvalidUpload(
        "expected a multipart field 'file' (NWB) or both 'spikes' and 'presentations' "
        f"(CSV/Parquet); got {got}"
    )


def _resolve_sites(*, session: Session, rec: RecordingSession, site_ids: list[str]) -> list[int]:
    rows = {
        sid: (pk, subject_id)
        for sid, pk, subject_id in session.execute(
            select(Site.site_id, Site.id, Array.subject_id)
            .join(Array, Array.id == Site.array_id)
            .where(Site.site_id.in_(site_ids))
        )
    }
    unknown = [s for s in site_ids if s not in rows]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:10]) + (
            f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        )
        raise InvalidUpload(f"unknown site id(s) {shown}; register sites before uploading their spikes")
    foreign = [s for s in site_ids if rows[s][1] != rec.subject_id]
    if foreign:
        raise InvalidUpload(
            f"site(s) {', '.join(repr(s) for s in foreign[:10])} belong to another subject than session "
            f"{rec.session_id!r}"
        )
    return [rows[s][0] for s in site_ids]


def _resolve_images(*, session: Session, hashes: list[str]) -> list[int]:
    wanted = sorted(set(hashes))
    found: dict[str, int] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        found.update(
            {h: i for h, i in session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(chunk)))}
        )
    unknown = [h for h in wanted if h not in found]
    if unknown:
        first = hashes.index(unknown[0])
        raise InvalidUpload(
            f"{len(unknown)} unknown image hash(es), e.g. {unknown[0]} (presentation row {first + 1}); "
            "every presented image must be registered first"
        )
    return [found[h] for h in hashes]


def nwb_options(*, presentations_table: str | None, site_map: str | None) -> dict[str, Any]:
    """The NWB upload options of the query string, checked: ``site_map`` is a JSON object of strings."""
    import json

    mapping: dict[str, str] = {}
    if site_map:
        try:
            raw = json.loads(site_map)
        except ValueError as exc:
            raise InvalidInput(
                f'site_map: not JSON ({exc}); expected an object such as {{"3": "A-001"}}'
            ) from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()
        ):
            raise InvalidInput("site_map: expected a JSON object of unit name or id -> site id strings")
        mapping = raw
    return {"presentations_table": presentations_table or None, "site_map": mapping}


def _map_units(
    *, session: Session, rec: RecordingSession, upload: ParsedUpload, site_map: dict[str, str]
) -> None:
    """NWB uploads: check the file's subject and give every unit its site (ingest/unitmap.py)."""
    from server.recordings.ingest.unitmap import InventorySite, map_units

    if upload.file_meta is not None:
        subject = session.get(Subject, rec.subject_id)
        named = upload.file_meta["subject"].get("subject_id", "")
        if subject is not None and named and named != subject.name:
            raise InvalidUpload(
                f"{upload.source}: the file's subject is {named!r} but session {rec.session_id!r} records "
                f"subject {subject.name!r}; upload the file to a session of that subject"
            )
    if upload.units is None:
        if site_map:
            raise InvalidUpload("site_map maps NWB units to sites; this upload has no NWB units")
        return
    rows = session.execute(
        select(Site.site_id, Array.name, Site.electrode, Site.unit)
        .join(Array, Array.id == Site.array_id)
        .where(Array.subject_id == rec.subject_id)
    ).all()
    sites = [InventorySite(site_id=r[0], array=r[1], electrode=r[2] or "", unit=r[3] or "") for r in rows]
    upload.assign_sites(map_units(upload.units, sites=sites, site_map=site_map, source=upload.source))


def _file_metadata(upload: ParsedUpload) -> dict[str, Any] | None:
    """What an NWB upload says beyond spikes and presentations, electrodes keyed by site id."""
    if upload.file_meta is None:
        return None
    electrodes: dict[str, dict[str, Any]] = {}
    for unit, site_id in zip(upload.units or [], upload.site_labels, strict=False):
        if unit.electrode is not None and site_id not in electrodes:
            electrodes[site_id] = {k: v for k, v in unit.electrode.items() if k not in ("id", "site_id")}
    return {**upload.file_meta, "electrodes": electrodes}


def _keep_file_metadata(rec: RecordingSession, meta: dict[str, Any] | None) -> None:
    """The file's session fields win where it has them; the rest is kept for the NWB export."""
    acquisition = {k: v for k, v in (rec.acquisition or {}).items() if k != "file"}
    if meta is not None:
        for key, width in (("institution", 200), ("lab", 200), ("session_start_time", 40)):
            if len(meta.get(key) or "") > width:
                raise InvalidUpload(
                    f"the NWB file's {key} has {len(meta[key])} characters; at most {width} fit"
                )
        for key in ("session_start_time", *NWB_FIELDS):
            if meta.get(key):
                setattr(rec, key, meta[key])
        acquisition["file"] = {k: v for k, v in meta.items() if k not in ("session_start_time", *NWB_FIELDS)}
    rec.acquisition = acquisition


def _delete_data(*, session: Session, session_pk: int) -> None:
    for table in (Response, SpikeTrain, Presentation):
        session.execute(delete(table).where(table.session_pk == session_pk))


def _presentation_ids(*, session: Session, session_pk: int, event_ids: list[str]) -> np.ndarray:
    rows = session.execute(
        select(Presentation.event_id, Presentation.id).where(Presentation.session_pk == session_pk)
    )
    ids = {e: i for e, i in rows}
    return np.asarray([ids[e] for e in event_ids], dtype=np.int64)


def _write_responses(
    *,
    session: Session,
    session_pk: int,
    presentation_ids: np.ndarray,
    site_pks: list[int],
    trains: list[np.ndarray],
    onset_s: np.ndarray,
    window_ms: tuple[float, float],
) -> int:
    counts_ = count_spikes(trains, onset_s, window_ms)  # (n_pres, n_sites)
    n_pres, n_sites = counts_.shape
    if n_pres * n_sites == 0:
        return 0
    length_s = (window_ms[1] - window_ms[0]) / 1000.0
    flat = counts_.ravel()
    return insert_columns(
        session,
        Response.__table__,  # type: ignore[arg-type]
        {
            "session_pk": np.full(flat.size, session_pk, dtype=np.int64),
            "presentation_id": np.repeat(presentation_ids, n_sites),
            "site_pk": np.tile(np.asarray(site_pks, dtype=np.int64), n_pres),
            "window_start_ms": np.full(flat.size, window_ms[0]),
            "window_end_ms": np.full(flat.size, window_ms[1]),
            "count": flat,
            "rate_hz": flat / length_s,
        },
    )


def ingest(
    *,
    session: Session,
    recording: RecordingSession,
    upload: ParsedUpload,
    window_ms: tuple[float, float] | None = None,
    replace: bool = False,
    fmt: str = "",
    site_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validate and store one upload; returns counts and whether it was a repeat (see module docstring).

    ``site_map`` (unit name or id -> site id) maps NWB units explicitly (ingest/unitmap.py).
    """
    window = check_window(window_ms or default_window())
    _map_units(session=session, rec=recording, upload=upload, site_map=site_map or {})
    data: CleanUpload = clean(upload)
    site_pks = _resolve_sites(session=session, rec=recording, site_ids=data.site_ids)
    image_ids = _resolve_images(session=session, hashes=data.image_sha256)
    result: dict[str, Any] = {"session_id": recording.session_id, "window_ms": window, "replaced": False}

    # One upload per session at a time: concurrent uploads wait here for the first to commit, then
    # see what it stored (same data: repeated; other data: 409). Row lock on PostgreSQL; SQLite's
    # write transactions are serial already (BEGIN IMMEDIATE), where FOR UPDATE is left out.
    session.refresh(recording, with_for_update=True)
    if recording.upload_sha256 == data.digest:
        stored = counts(session=session, session_pk=recording.id, window_ms=window)
        if stored["responses"] == 0 and stored["presentations"] and stored["sites"]:
            stored["responses"] = compute_responses(session=session, recording=recording, window_ms=window)
        return {**result, **stored, "repeated": True}
    if recording.upload_sha256 is not None:
        if not replace:
            raise Conflict(
                f"session {recording.session_id!r} already has different spike data; "
                "upload with ?replace=true to replace it"
            )
        _delete_data(session=session, session_pk=recording.id)
        result["replaced"] = True
    try:
        return _store(
            session=session,
            recording=recording,
            upload=upload,
            data=data,
            site_pks=site_pks,
            image_ids=image_ids,
            window=window,
            fmt=fmt,
            result=result,
        )
    except IntegrityError as exc:
        # The row lock above serialises uploads; this is the backstop for any other writer.
        log.warning("upload to session %s collided with stored data: %s", recording.session_id, exc.orig)
        raise Conflict(
            f"session {recording.session_id!r}: this upload collided with data stored at the same time; "
            "nothing of it was stored. Look at the session and upload again if needed"
        ) from None


def _store(
    *,
    session: Session,
    recording: RecordingSession,
    upload: ParsedUpload,
    data: CleanUpload,
    site_pks: list[int],
    image_ids: list[int],
    window: tuple[float, float],
    fmt: str,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Write a validated upload's rows (the caller has locked the session and removed old data)."""
    n_pres = len(data.event_ids)
    insert_columns(
        session,
        Presentation.__table__,  # type: ignore[arg-type]
        {
            "session_pk": np.full(n_pres, recording.id, dtype=np.int64),
            "event_id": data.event_ids,
            "image_id": np.asarray(image_ids, dtype=np.int64),
            "onset_s": data.onset_s,
            "fixation_ok": data.fixation_ok,
            "stop_s": [float(x) if np.isfinite(x) else None for x in data.stop_s.tolist()],
        },
    )
    insert_columns(
        session,
        SpikeTrain.__table__,  # type: ignore[arg-type]
        {
            "session_pk": [recording.id] * len(site_pks),
            "site_pk": site_pks,
            "n_spikes": [len(t) for t in data.trains],
            "times": [t.tobytes() for t in data.trains],
        },
    )
    pres_ids = _presentation_ids(session=session, session_pk=recording.id, event_ids=data.event_ids)
    n_resp = _write_responses(
        session=session,
        session_pk=recording.id,
        presentation_ids=pres_ids,
        site_pks=site_pks,
        trains=data.trains,
        onset_s=data.onset_s,
        window_ms=window,
    )
    durations = data.stop_s - data.onset_s
    durations = durations[np.isfinite(durations) & (durations > 0)]
    last_spike = max((float(t[-1]) for t in data.trains if len(t)), default=0.0)
    recording.upload_sha256 = data.digest
    recording.duration_s = max(float(data.onset_s.max()), last_spike)
    recording.meta = {
        **_user_meta(recording),
        INGEST_KEY: {
            "format": fmt or upload.source,
            "window_ms": list(window),
            "stim_duration_s": float(np.median(durations)) if len(durations) else None,
            "uploaded_at": utcnow().isoformat(),
        },
    }
    _keep_file_metadata(recording, _file_metadata(upload))
    session.flush()
    log.info(
        "ingested session %s: %d sites, %d presentations, %d spikes, %d responses",
        recording.session_id,
        len(site_pks),
        n_pres,
        data.n_spikes,
        n_resp,
    )
    return {
        **result,
        "sites": len(site_pks),
        "presentations": n_pres,
        "spikes": data.n_spikes,
        "responses": n_resp,
        "repeated": False,
    }


def ingest_files(
    *,
    session: Session,
    session_id: str,
    files: dict[str, Path],
    window_ms: tuple[float, float] | None = None,
    replace: bool = False,
    presentations_table: str | None = None,
    site_map: dict[str, str] | None = None,
    sync_series: str | None = None,
    refresh_hz: float | None = None,
    sync_tolerance_ms: float | None = None,
) -> dict[str, Any]:
    """Parse the uploaded files (NWB or CSV/Parquet) and :func:`ingest` them.

    The files are parsed before the database is touched: the transaction (and on SQLite the
    write lock) is not held while a large file is read. With sync pulses (a ``sync`` file or
    ``sync_series``) the presentations come from the rig's events (``server.recordings.alignment``);
    otherwise the upload's own presentations are cross-checked against those events.
    """
    from server.recordings import alignment

    if "sync" in files or sync_series is not None:
        return alignment.ingest_with_sync(
            session=session,
            session_id=session_id,
            files=files,
            sync_series=sync_series,
            window_ms=window_ms,
            replace=replace,
            refresh_hz=refresh_hz,
            tolerance_ms=sync_tolerance_ms,
            site_map=site_map,
        )
    upload = parse_files(files, presentations_table)
    recording = get_session(session=session, session_id=session_id)
    checked = alignment.check_against_rig(
        session=session, recording=recording, upload=upload, tolerance_ms=sync_tolerance_ms
    )
    if "file" in files:
        fmt = "nwb"
    else:
        from server.recordings.ingest.columnar import is_parquet

        fmt = "parquet" if is_parquet(files["spikes"]) else "csv"
    result = ingest(
        session=session,
        recording=recording,
        upload=upload,
        window_ms=window_ms,
        replace=replace,
        fmt=fmt,
        site_map=site_map,
    )
    if checked is not None:
        alignment.record_in_ingest(recording, "rig_cross_check", checked)
        session.flush()
        result["rig_cross_check"] = checked
    return result


# --- stored data and responses ----------------------------------------------------------


def compute_responses(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float]
) -> int:
    """(Re)compute and store the responses of a session for one window; returns the number of rows."""
    window = check_window(window_ms)
    site_ids, site_pks, trains = load_trains(session=session, session_pk=recording.id)
    pres = session.execute(
        select(Presentation.id, Presentation.onset_s)
        .where(Presentation.session_pk == recording.id)
        .order_by(Presentation.onset_s, Presentation.event_id)
    ).all()
    session.execute(
        delete(Response).where(
            Response.session_pk == recording.id,
            Response.window_start_ms == window[0],
            Response.window_end_ms == window[1],
        )
    )
    return _write_responses(
        session=session,
        session_pk=recording.id,
        presentation_ids=np.asarray([p[0] for p in pres], dtype=np.int64),
        site_pks=site_pks,
        trains=trains,
        onset_s=np.asarray([p[1] for p in pres], dtype=np.float64),
        window_ms=window,
    )
