"""Exports of one session: NWB 2 (spikes + presentations) and a Brain-Score style assembly (netCDF).

The NWB export uses the same layout the upload accepts, so uploading an export again
is recognised as the same data. The assembly is an ``xarray.DataArray`` of rates (Hz)
with dims (presentation, neuroid), the coordinates Brain-Score's
``NeuronRecordingAssembly`` uses, plus each image's lineage; it is written with the
scipy netCDF3 engine, which needs no extra dependency (strings become char arrays,
booleans int8; xarray decodes both back).
"""

from __future__ import annotations

import io
import math
import tempfile
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from itloop.errors import Conflict
from server.images.tables import Image
from server.lab.tables import Array, Site, Subject
from server.modeling.tables import ModelVersion
from server.recordings.queries import load_trains, response_matrix
from server.recordings.tables import RecordingSession

DEFAULT_STIM_DURATION_S = 0.1


def _site_rows(session: Session, site_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = session.execute(
        select(
            Site.site_id, Site.electrode, Site.unit, Array.name, Array.region, Array.hemisphere, Subject.name
        )
        .join(Array, Array.id == Site.array_id)
        .join(Subject, Subject.id == Array.subject_id)
        .where(Site.site_id.in_(site_ids))
    ).all()
    return {
        r[0]: {
            "electrode": r[1] or "",
            "unit": r[2] or "",
            "array": r[3],
            "region": r[4] or "",
            "hemisphere": r[5] or "",
            "subject": r[6],
        }
        for r in rows
    }


def _require_data(recording: RecordingSession) -> None:
    if recording.upload_sha256 is None:
        raise Conflict(f"session {recording.session_id!r} has no spike data yet; upload it first")


def build_nwb(*, session: Session, recording: RecordingSession) -> bytes:
    """An NWB file with units (spike_times, site_id, electrode metadata) and presentations intervals."""
    _require_data(recording)
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject as NWBSubject

    subject = session.get(Subject, recording.subject_id)
    site_ids, _, trains = load_trains(session=session, session_pk=recording.id)
    m = response_matrix(session=session, session_pk=recording.id)
    meta = _site_rows(session, site_ids)
    ingest = (recording.meta or {}).get("_ingest", {})
    duration = ingest.get("stim_duration_s") or DEFAULT_STIM_DURATION_S
    start = recording.created_at if recording.created_at.tzinfo else recording.created_at.replace(tzinfo=UTC)
    nwb = NWBFile(
        session_description=f"itloop session {recording.session_id} (day {recording.day})",
        identifier=recording.session_id,
        session_id=recording.session_id,
        session_start_time=start,
        subject=NWBSubject(
            subject_id=subject.name if subject else "unknown", species=subject.species if subject else None
        ),
    )
    device = nwb.create_device(name="itloop-array", description="chronic multi-electrode arrays")
    groups: dict[str, Any] = {}
    electrode_of: dict[str, int] = {}
    for col, desc in (("site_id", "itloop site id"), ("array", "array name"), ("unit_kind", "mua or unit")):
        nwb.add_electrode_column(name=col, description=desc)
    for i, sid in enumerate(site_ids):
        info = meta.get(sid, {})
        array = info.get("array", "array")
        if array not in groups:
            groups[array] = nwb.create_electrode_group(
                name=array,
                description=f"array {array}",
                location=info.get("region", "IT") or "IT",
                device=device,
            )
        nwb.add_electrode(
            group=groups[array],
            location=info.get("region", "IT") or "IT",
            site_id=sid,
            array=array,
            unit_kind=info.get("unit", ""),
        )
        electrode_of[sid] = i
    nwb.add_unit_column(name="site_id", description="itloop site id (stable across days)")
    nwb.add_unit_column(name="electrode_name", description="electrode label from the lab inventory")
    nwb.add_unit_column(name="region", description="brain region of the array")
    for sid, train in zip(site_ids, trains, strict=True):
        info = meta.get(sid, {})
        nwb.add_unit(
            spike_times=np.asarray(train, dtype=np.float64),
            electrodes=[electrode_of[sid]],
            site_id=sid,
            electrode_name=info.get("electrode", ""),
            region=info.get("region", ""),
        )
    table = TimeIntervals(name="presentations", description="image presentations on the session clock")
    table.add_column(name="image_sha256", description="SHA-256 of the PNG shown")
    table.add_column(name="event_id", description="rig event id")
    table.add_column(name="fixation_ok", description="fixation held through the presentation")
    for eid, sha, onset, fix in zip(m.event_ids, m.image_sha256, m.onset_s, m.fixation_ok, strict=True):
        table.add_row(
            start_time=float(onset),
            stop_time=float(onset) + duration,
            image_sha256=sha,
            event_id=eid,
            fixation_ok=bool(fix),
        )
    nwb.add_time_intervals(table)
    with tempfile.TemporaryDirectory(prefix="itloop-nwb-") as tmp:
        path = Path(tmp) / "export.nwb"
        with NWBHDF5IO(str(path), "w") as io_:
            io_.write(nwb)
        return path.read_bytes()


def _lineage(session: Session, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    parent = aliased(Image)
    rows = session.execute(
        select(
            Image.id,
            Image.kind,
            parent.sha256,
            ModelVersion.version,
            Site.site_id,
            Image.epsilon,
            Image.direction,
            Image.seed,
        )
        .outerjoin(parent, parent.id == Image.parent_id)
        .outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)
        .outerjoin(Site, Site.id == Image.site_pk)
        .where(Image.id.in_(image_ids))
    ).all()
    return {
        r[0]: {
            "kind": r[1] or "",
            "parent_sha256": r[2] or "",
            "model_version": r[3] or "",
            "perturbed_site": r[4] or "",
            "epsilon": math.nan if r[5] is None else float(r[5]),
            "direction": r[6] or "",
            "seed": -1 if r[7] is None else int(r[7]),
        }
        for r in rows
    }


def build_assembly(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float] | None = None
) -> Any:
    """A DataArray of rates (Hz), dims (presentation, neuroid), Brain-Score coordinates and lineage."""
    import xarray as xr

    _require_data(recording)
    m = response_matrix(session=session, session_pk=recording.id, window_ms=window_ms)
    meta = _site_rows(session, m.site_ids)
    lineage = _lineage(session, sorted(set(m.image_ids.tolist())))
    lin = [lineage.get(int(i), {}) for i in m.image_ids]
    repetition = np.zeros(len(m.event_ids), dtype=np.int32)
    seen: dict[int, int] = {}
    for k, image_id in enumerate(m.image_ids.tolist()):
        repetition[k] = seen.get(image_id, 0)
        seen[image_id] = repetition[k] + 1
    subject = session.get(Subject, recording.subject_id)
    presentation = {
        "image_id": ("presentation", np.asarray(m.image_sha256, dtype=str)),
        "stimulus_id": ("presentation", np.asarray(m.image_sha256, dtype=str)),
        "event_id": ("presentation", np.asarray(m.event_ids, dtype=str)),
        "onset_s": ("presentation", m.onset_s),
        "fixation_ok": ("presentation", m.fixation_ok),
        "repetition": ("presentation", repetition),
        "kind": ("presentation", np.asarray([x.get("kind", "") for x in lin], dtype=str)),
        "parent_sha256": ("presentation", np.asarray([x.get("parent_sha256", "") for x in lin], dtype=str)),
        "model_version": ("presentation", np.asarray([x.get("model_version", "") for x in lin], dtype=str)),
        "perturbed_site": ("presentation", np.asarray([x.get("perturbed_site", "") for x in lin], dtype=str)),
        "epsilon": ("presentation", np.asarray([x.get("epsilon", math.nan) for x in lin], dtype=np.float64)),
        "direction": ("presentation", np.asarray([x.get("direction", "") for x in lin], dtype=str)),
        "seed": ("presentation", np.asarray([x.get("seed", -1) for x in lin], dtype=np.int32)),
    }
    neuroid = {
        "neuroid_id": ("neuroid", np.asarray(m.site_ids, dtype=str)),
        "array": ("neuroid", np.asarray([meta.get(s, {}).get("array", "") for s in m.site_ids], dtype=str)),
        "electrode": (
            "neuroid",
            np.asarray([meta.get(s, {}).get("electrode", "") for s in m.site_ids], dtype=str),
        ),
        "subject": ("neuroid", np.asarray([subject.name if subject else ""] * len(m.site_ids), dtype=str)),
        "region": ("neuroid", np.asarray([meta.get(s, {}).get("region", "") for s in m.site_ids], dtype=str)),
    }
    da = xr.DataArray(
        m.rates_hz.astype(np.float64),
        dims=("presentation", "neuroid"),
        coords={**presentation, **neuroid, "time_bin_start": m.window_ms[0], "time_bin_end": m.window_ms[1]},
        name="rate_hz",
        attrs={
            "units": "Hz",
            "session_id": recording.session_id,
            "day": int(recording.day),
            "description": "spike rate in [time_bin_start, time_bin_end) ms after onset",
        },
    )
    return da


def assembly_netcdf(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float] | None = None
) -> bytes:
    """The assembly as netCDF3 bytes (scipy engine)."""
    da = build_assembly(session=session, recording=recording, window_ms=window_ms)
    buf = io.BytesIO()
    da.to_netcdf(buf, engine="scipy")
    return buf.getvalue()
