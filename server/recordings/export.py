"""Brain-Score exports of one session: the response assembly (netCDF) that pairs with its StimulusSet.

The assembly is an ``xarray.DataArray`` of rates (Hz) with dims (presentation, neuroid,
time_bin) and brainio's coordinate names, so ``brainio``'s ``NeuronRecordingAssembly`` loads it
unchanged: per presentation ``stimulus_id`` (the image's SHA-256, the key of the StimulusSet
export in :mod:`server.recordings.stimulus_set`), ``repetition`` and the image's full lineage;
per neuroid ``neuroid_id`` (the site id), ``animal``, ``region``, ``arr``, ``elec``; per time bin
``time_bin_start`` / ``time_bin_end`` in ms after onset. It is written with the scipy netCDF3
engine, which needs no extra dependency (strings become char arrays, booleans int8; xarray decodes
both back). The NWB export is :mod:`server.recordings.export_nwb`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.lab.tables import Array, Site, Subject
from server.recordings.export_nwb import build_nwb, require_data
from server.recordings.lineage import LINEAGE_FIELDS, image_lineage
from server.recordings.queries import response_matrix
from server.recordings.tables import RecordingSession

__all__ = ["assembly_netcdf", "build_assembly", "build_nwb"]

#: Per-presentation lineage coordinates: the lineage record's fields but the source set's name,
#: which only the StimulusSet CSV carries.
LINEAGE_COORDS = tuple(key for key in LINEAGE_FIELDS if key != "source_name")


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


def build_assembly(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float] | None = None
) -> Any:
    """A DataArray of rates (Hz), dims (presentation, neuroid, time_bin), brainio coordinates, lineage."""
    import xarray as xr

    require_data(recording)
    m = response_matrix(session=session, session_pk=recording.id, window_ms=window_ms)
    meta = _site_rows(session, m.site_ids)
    lineage = image_lineage(session, sorted(set(m.image_ids.tolist())))
    lin = [lineage[int(i)] for i in m.image_ids]
    repetition = np.zeros(len(m.event_ids), dtype=np.int32)
    seen: dict[int, int] = {}
    for k, image_id in enumerate(m.image_ids.tolist()):
        repetition[k] = seen.get(image_id, 0)
        seen[image_id] = repetition[k] + 1
    subject = session.get(Subject, recording.subject_id)
    stimulus_id = np.asarray(m.image_sha256, dtype=str)

    def lineage_coord(key: str) -> tuple[str, np.ndarray]:
        values = [x[key] for x in lin]
        if key == "seed":  # text: netCDF3 has no 64-bit integers and engine seeds are 63-bit
            return ("presentation", np.asarray(["" if v < 0 else str(v) for v in values], dtype=str))
        if key in ("epsilon", "predicted_change", "achieved_l2"):
            return ("presentation", np.asarray(values, dtype=np.float64))
        return ("presentation", np.asarray(values, dtype=str))

    presentation = {
        "stimulus_id": ("presentation", stimulus_id),
        "image_id": ("presentation", stimulus_id),  # the pre-2022 Brain-Score name, kept for old readers
        "event_id": ("presentation", np.asarray(m.event_ids, dtype=str)),
        "onset_s": ("presentation", m.onset_s),
        "fixation_ok": ("presentation", m.fixation_ok),
        "repetition": ("presentation", repetition),
        "session_id": ("presentation", np.asarray([recording.session_id] * len(m.event_ids), dtype=str)),
        **{key: lineage_coord(key) for key in LINEAGE_COORDS},
    }

    def site_coord(key: str) -> tuple[str, np.ndarray]:
        return ("neuroid", np.asarray([meta.get(s, {}).get(key, "") for s in m.site_ids], dtype=str))

    neuroid = {
        "neuroid_id": ("neuroid", np.asarray(m.site_ids, dtype=str)),
        "animal": ("neuroid", np.asarray([subject.name if subject else ""] * len(m.site_ids), dtype=str)),
        "region": site_coord("region"),
        "arr": site_coord("array"),
        "elec": site_coord("electrode"),
        "hemisphere": site_coord("hemisphere"),
        "unit_kind": site_coord("unit"),
    }
    time_bin = {
        "time_bin_start": ("time_bin", np.asarray([m.window_ms[0]], dtype=np.float64)),
        "time_bin_end": ("time_bin", np.asarray([m.window_ms[1]], dtype=np.float64)),
    }
    return xr.DataArray(
        m.rates_hz.astype(np.float64)[:, :, None],
        dims=("presentation", "neuroid", "time_bin"),
        coords={**presentation, **neuroid, **time_bin},
        name="rate_hz",
        attrs={
            "units": "Hz",
            "session_id": recording.session_id,
            "day": int(recording.day),
            "stimulus_set_identifier": f"itloop.{recording.session_id}",
            "description": "spike rate in [time_bin_start, time_bin_end) ms after onset; pairs with "
            "GET /sessions/{id}/stimulus_set.csv by stimulus_id",
        },
    )


def assembly_netcdf(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float] | None = None
) -> bytes:
    """The assembly as netCDF3 bytes (scipy engine)."""
    da = build_assembly(session=session, recording=recording, window_ms=window_ms)
    buf = io.BytesIO()
    da.to_netcdf(buf, engine="scipy")
    return buf.getvalue()
