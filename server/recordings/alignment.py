"""Spike uploads aligned by sync pulses, and uploads cross-checked against the rig's own events.

Two jobs, both joining the rig's stored presentation events (``rig_events``, posted live by the
rig to ``POST /batches/{id}/presentations``) with a spike upload:

- **Sync mode** (:func:`presentations_from_sync`): the upload carries spikes and the recorder's sync
  pulses (a ``sync`` CSV/Parquet file with ``time_s`` and optional ``stop_s``, or a named
  TimeSeries / TimeIntervals in the NWB file) but no presentations. The presentations are the
  rig's events of the session's batch, placed on the recorder's clock by
  :func:`models.clock_alignment.align`; the fit's report (offset, drift, residuals, late and
  dropped frames) is stored with the session and returned.
- **Cross-check** (:func:`check_against_rig`): an upload that brings its own presentations is
  compared with the rig's events of the session's batch, when there are any. Events with the
  same ``event_id`` must show the same image, and their onsets must agree once an offset and
  drift are fitted (the two clocks differ); a contradiction is a 422 naming the events and by
  how much, and nothing is stored.

Reading pulse files is ``server.recordings.ingest.sync``; the science is ``models.clock_alignment``;
this module joins them with the database.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import InvalidUpload
from models.clock_alignment import AlignmentError, align, cross_check
from server.batches.tables import Batch
from server.lab.tables import Rig
from server.recordings.ingest.validate import ParsedUpload
from server.recordings.sessions import INGEST_KEY
from server.recordings.tables import RecordingSession, RigEvent

log = logging.getLogger(__name__)

MAX_FLAGGED_STORED = 1000  # flagged events kept in the session's ingest record
DEFAULT_REFRESH_HZ = 60.0  # for the cross-check's tolerance when the rig did not state its refresh rate
ALIGNMENT_KEY = "alignment"


# --- the rig's side ---------------------------------------------------------------------


def _batch_of(session: Session, recording: RecordingSession) -> Batch | None:
    return session.get(Batch, recording.batch_pk) if recording.batch_pk else None


def rig_events(session: Session, batch: Batch) -> list[tuple[str, int | None, str, float, bool]]:
    """The rig's stored events for a batch: (event_id, seq, image, onset_s, fixation_ok) by onset."""
    rows = session.execute(
        select(RigEvent.event_id, RigEvent.seq, RigEvent.image_sha256, RigEvent.onset_s, RigEvent.fixation_ok)
        .where(RigEvent.batch_pk == batch.id)
        .order_by(RigEvent.onset_s, RigEvent.event_id)
    ).all()
    return [(r[0], r[1], r[2], float(r[3]), bool(r[4])) for r in rows]


def refresh_rate(session: Session, batch: Batch) -> float | None:
    """The refresh rate the batch was made for: its manifest's display block, else the rig's screen."""
    display = (batch.manifest or {}).get("display") or {}
    if display.get("refresh_hz"):
        return float(display["refresh_hz"])
    screen = session.scalar(select(Rig.screen).where(Rig.id == batch.rig_pk)) or {}
    value = screen.get("refresh_hz")
    return float(value) if isinstance(value, int | float) and value > 0 else None


# --- sync mode --------------------------------------------------------------------------


def presentations_from_sync(
    *,
    session: Session,
    recording: RecordingSession,
    spikes: ParsedUpload,
    pulses: tuple[np.ndarray, np.ndarray | None],
    refresh_hz: float | None = None,
    tolerance_ms: float | None = None,
) -> tuple[ParsedUpload, dict[str, Any]]:
    """The upload completed with the rig's events on the recorder's clock, and the alignment report."""
    batch = _batch_of(session, recording)
    if batch is None:
        raise InvalidUpload(
            f"session {recording.session_id!r} names no batch: a sync upload takes its presentations from "
            "the rig's events of the session's batch (create the session with batch_id)"
        )
    events = rig_events(session, batch)
    if not events:
        raise InvalidUpload(
            f"the rig posted no presentation events for batch {batch.batch_id!r}: a sync upload needs them "
            "(POST /batches/{batch_id}/presentations), or upload the presentations yourself"
        )
    on_ms = {s["seq"]: s["on_ms"] for s in (batch.manifest or {}).get("sequence", [])}
    planned = np.asarray([on_ms.get(e[1], np.nan) / 1000.0 if e[1] is not None else np.nan for e in events])
    hz = refresh_hz or refresh_rate(session, batch)
    kwargs: dict[str, Any] = {}
    if tolerance_ms is not None:
        kwargs["tolerance_s"] = tolerance_ms / 1000.0
    try:
        result = align(
            [e[3] for e in events], pulses[0], pulses[1], planned_on_s=planned, refresh_hz=hz, **kwargs
        )
    except AlignmentError as exc:
        raise InvalidUpload(f"sync: {exc}") from None
    report = dict(result.report)
    flagged = [
        {
            "event_id": events[i][0],
            "seq": events[i][1],
            "late_frames": int(result.late_frames[i]),
            "dropped_frames": int(result.dropped_frames[i]),
            "duration_ms": None if not result.measured[i] else round(float(result.duration_ms[i]), 3),
        }
        for i in result.flagged
    ]
    report["flagged"] = flagged[:MAX_FLAGGED_STORED]
    report["missing_pulse_events"] = [events[i][0] for i in np.flatnonzero(result.pulse < 0)][
        :MAX_FLAGGED_STORED
    ]
    if hz is None:
        report["note"] = (
            "no refresh rate known (rig screen or ?refresh_hz=): late and dropped frames not checked"
        )
    upload = ParsedUpload(
        site_labels=spikes.site_labels,
        spike_site=spikes.spike_site,
        spike_times=spikes.spike_times,
        event_ids=[e[0] for e in events],
        image_sha256=[e[2] for e in events],
        onset_s=np.asarray(result.onset_s, dtype=np.float64),
        stop_s=np.asarray(result.stop_s, dtype=np.float64),
        fixation_ok=np.asarray([e[4] for e in events], dtype=bool),
        source=f"{spikes.source}+sync",
        empty_sites=spikes.empty_sites,
    )
    log.info(
        "session %s aligned: offset %.6f s, drift %.2f ppm, rms %.3f ms, %d late, %d dropped",
        recording.session_id,
        report["offset_s"],
        report["drift_ppm"],
        report["residual_rms_ms"] or 0.0,
        report["n_late"],
        report["n_dropped"],
    )
    return upload, report


# --- cross-check ------------------------------------------------------------------------


def check_against_rig(
    *, session: Session, recording: RecordingSession, upload: ParsedUpload, tolerance_ms: float | None = None
) -> dict[str, Any] | None:
    """Refuse (422) an upload whose presentations contradict the rig's stored events; None if none exist.

    Compared by ``event_id``: the image must be the same, and the onsets must agree within
    ``tolerance_ms`` (default one frame of the rig's screen, 60 Hz when unknown) after an offset
    and drift are fitted. Returns a short summary of the check.
    """
    batch = _batch_of(session, recording)
    if batch is None:
        return None
    events = {e[0]: e for e in rig_events(session, batch)}
    if not events:
        return None
    common = [i for i, e in enumerate(upload.event_ids) if e in events]
    if not common:
        log.info(
            "session %s: no uploaded event id matches the rig's events of batch %s; not cross-checked",
            recording.session_id,
            batch.batch_id,
        )
        return {"checked": 0, "note": "no event id in common with the rig's events"}
    wrong = [i for i in common if events[upload.event_ids[i]][2] != upload.image_sha256[i]]
    if wrong:
        shown = "; ".join(
            f"{upload.event_ids[i]!r}: rig showed {events[upload.event_ids[i]][2][:12]}…, upload says "
            f"{upload.image_sha256[i][:12]}…"
            for i in wrong[:5]
        )
        raise InvalidUpload(
            f"{len(wrong)} uploaded presentation(s) contradict the rig's events of batch {batch.batch_id!r} "
            f"(another image under the same event_id): {shown}; nothing was stored"
        )
    hz = refresh_rate(session, batch) or DEFAULT_REFRESH_HZ
    tol_ms = tolerance_ms if tolerance_ms is not None else 1000.0 / hz
    rig_on = np.asarray([events[upload.event_ids[i]][3] for i in common])
    up_on = np.asarray([upload.onset_s[i] for i in common], dtype=np.float64)
    try:
        clock, residual = cross_check(rig_on, up_on, tolerance_s=tol_ms / 1000.0)
    except AlignmentError as exc:
        raise InvalidUpload(f"cross-check against the rig's events: {exc}") from None
    off = np.flatnonzero(np.abs(residual) > tol_ms)
    if len(off):
        worst = off[np.argsort(-np.abs(residual[off]))][:5]
        shown = "; ".join(f"{upload.event_ids[common[k]]!r} by {residual[k]:+.1f} ms" for k in worst)
        raise InvalidUpload(
            f"{len(off)} uploaded onset(s) contradict the rig's events of batch {batch.batch_id!r} by more "
            f"than {tol_ms:.1f} ms after fitting offset {clock.offset_s:.6f} s and drift "
            f"{clock.drift_ppm:.1f} ppm: {shown}; nothing was stored"
        )
    return {
        "checked": len(common),
        "offset_s": clock.offset_s,
        "drift_ppm": clock.drift_ppm,
        "residual_max_ms": float(np.max(np.abs(residual))),
        "tolerance_ms": tol_ms,
    }


# --- the upload mode --------------------------------------------------------------------


def record_in_ingest(recording: RecordingSession, key: str, value: Any) -> None:
    """Keep ``value`` under ``key`` in the session's ingest record (reassigned so the JSON column saves)."""
    meta = dict(recording.meta or {})
    meta[INGEST_KEY] = {**meta.get(INGEST_KEY, {}), key: value}
    recording.meta = meta
