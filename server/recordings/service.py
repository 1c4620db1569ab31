"""Recording sessions and their spike data: the one module routes and night stages import.

It re-exports the pieces, one idea per module: :mod:`server.recordings.sessions` (the session
rows), :mod:`server.recordings.upload_files` (reading an upload), :mod:`server.recordings.store`
(storing it, all or nothing), :mod:`server.recordings.stored` (counts and responses); and it
holds :func:`ingest_files`, which picks the path an upload takes (with the rig's sync pulses
through :mod:`server.recordings.alignment`, or cross-checked against them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.recordings import alignment
from server.recordings.ingest.sync import parse_sync_upload
from server.recordings.queries import ResponseTable, load_trains, responses_by_image
from server.recordings.sessions import (
    INGEST_KEY,
    NWB_FIELDS,
    SUBJECT_FIELDS,
    SessionState,
    complete_session,
    create_session,
    describe,
    get_by_pk,
    get_session,
    list_sessions,
    nwb_fields,
)
from server.recordings.store import ingest
from server.recordings.stored import compute_responses, counts
from server.recordings.upload_files import nwb_options, parse_files

__all__ = [
    "INGEST_KEY",
    "NWB_FIELDS",
    "SUBJECT_FIELDS",
    "ResponseTable",
    "SessionState",
    "complete_session",
    "compute_responses",
    "counts",
    "create_session",
    "describe",
    "get_by_pk",
    "get_session",
    "ingest",
    "ingest_files",
    "list_sessions",
    "load_trains",
    "nwb_fields",
    "nwb_options",
    "parse_files",
    "responses_by_image",
]


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
    kept: dict[str, Any] | None  # the alignment report, or what the cross-check found
    if "sync" in files or sync_series is not None:
        spikes, pulses, fmt = parse_sync_upload(files, sync_series)
        recording = get_session(session=session, session_id=session_id)
        upload, kept = alignment.presentations_from_sync(
            session=session,
            recording=recording,
            spikes=spikes,
            pulses=pulses,
            refresh_hz=refresh_hz,
            tolerance_ms=sync_tolerance_ms,
        )
        key = alignment.ALIGNMENT_KEY
    else:
        upload = parse_files(files, presentations_table)
        recording = get_session(session=session, session_id=session_id)
        kept = alignment.check_against_rig(
            session=session, recording=recording, upload=upload, tolerance_ms=sync_tolerance_ms
        )
        key = "rig_cross_check"
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
    if kept is None:
        return result
    alignment.record_in_ingest(recording, key, kept)
    session.flush()
    return {**result, key: kept}
