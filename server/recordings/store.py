"""Storing one upload in a session, all or nothing.

Ingest parses and validates everything (files, then the database's sites and images) before
the first write; writes happen in the caller's transaction, so any failure rolls all of them
back. Identical data uploaded again changes nothing; other data for a session that already
has some is a 409 unless ``replace=True``, which deletes and re-inserts in the same
transaction.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidUpload
from server.db.base import utcnow
from server.images.tables import Image
from server.lab.tables import Array, Site
from server.recordings.ingest.copy import insert_columns
from server.recordings.ingest.responses import resolve_window
from server.recordings.ingest.validate import CleanUpload, ParsedUpload, clean
from server.recordings.sessions import INGEST_KEY, user_meta
from server.recordings.stored import compute_responses, counts, delete_data, presentation_ids, write_responses
from server.recordings.tables import Presentation, RecordingSession, SpikeTrain
from server.recordings.upload_files import assign_units, file_metadata, keep_file_metadata

log = logging.getLogger(__name__)


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
    window = resolve_window(window_ms)
    assign_units(session=session, rec=recording, upload=upload, site_map=site_map or {})
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
        delete_data(session=session, session_pk=recording.id)
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
    pres_ids = presentation_ids(session=session, session_pk=recording.id, event_ids=data.event_ids)
    n_resp = write_responses(
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
        **user_meta(recording),
        INGEST_KEY: {
            "format": fmt or upload.source,
            "window_ms": list(window),
            "stim_duration_s": float(np.median(durations)) if len(durations) else None,
            "uploaded_at": utcnow().isoformat(),
        },
    }
    keep_file_metadata(recording, file_metadata(upload))
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
