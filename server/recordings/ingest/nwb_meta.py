"""The metadata of an NWB upload that the lab inventory does not hold, as plain JSON-able data.

Kept with the session (``RecordingSession`` columns and ``acquisition``) and written back by the
NWB export, so a file goes in and comes out with its subject, session, device, electrode group
and electrode metadata intact (docs/nwb-and-brainscore.md lists every field).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from server.errors import InvalidUpload


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _texts(value: Any) -> list[str]:
    """NWB stores experimenter and keywords as a string or an array of strings."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [_text(value)]
    return [_text(v) for v in value]


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def subject_meta(nwb: Any, name: str) -> dict[str, str]:
    """The file's Subject; a file without one is refused (DANDI needs subject_id, species, sex, age)."""
    subject = nwb.subject
    if subject is None:
        raise InvalidUpload(
            f"{name}: the NWB file has no subject (nwbfile.subject is missing); add a pynwb Subject with "
            "subject_id (the registered subject's name), species, sex and age or date_of_birth"
        )
    return {
        key: _text(getattr(subject, key, None))
        for key in ("subject_id", "species", "sex", "age", "date_of_birth", "weight", "strain", "description")
    }


def electrode_rows(nwb: Any) -> list[dict[str, Any]]:
    """One dict per row of the electrodes table: group, location, x/y/z, label, site_id (when given).

    ``label`` is the ``channel_name`` (NeuroConv, SpikeInterface) or ``label`` column, "" when neither.
    """
    table = nwb.electrodes
    if table is None or len(table) == 0:
        return []
    cols = set(table.colnames)
    n = len(table)
    ids = [int(i) for i in table.id[:]]

    def column(col: str) -> list[Any]:
        return list(table[col].data[:]) if col in cols else [None] * n

    groups = [g.name for g in table["group"].data[:]] if "group" in cols else column("group_name")
    label_col = next((c for c in ("channel_name", "label") if c in cols), None)
    labels = column(label_col) if label_col else [""] * n
    rows = []
    for k in range(n):
        row: dict[str, Any] = {
            "id": ids[k],
            "group": _text(groups[k]),
            "location": _text(column("location")[k]),
            "label": _text(labels[k]),
        }
        for axis in ("x", "y", "z"):
            row[axis] = _number(column(axis)[k]) if axis in cols else None
        if "site_id" in cols:
            row["site_id"] = _text(column("site_id")[k]).strip()
        rows.append(row)
    return rows


def file_meta(nwb: Any, name: str) -> dict[str, Any]:
    """Session, subject, devices, electrode groups and units resolution of an NWB file."""
    start = nwb.session_start_time
    devices = [
        {
            "name": d.name,
            "description": _text(d.description),
            "manufacturer": _text(getattr(d, "manufacturer", None)),
        }
        for d in (nwb.devices or {}).values()
    ]
    groups = [
        {
            "name": g.name,
            "description": _text(g.description),
            "location": _text(g.location),
            "device": g.device.name if g.device is not None else "",
        }
        for g in (nwb.electrode_groups or {}).values()
    ]
    resolution = _number(getattr(nwb.units, "resolution", None)) if nwb.units is not None else None
    return {
        "session_start_time": start.isoformat() if isinstance(start, datetime) else None,
        "description": _text(nwb.session_description),
        "experiment_description": _text(nwb.experiment_description),
        "experimenter": _texts(nwb.experimenter),
        "institution": _text(nwb.institution),
        "lab": _text(nwb.lab),
        "keywords": _texts(nwb.keywords),
        "subject": subject_meta(nwb, name),
        "devices": devices,
        "electrode_groups": groups,
        "units_resolution": resolution if resolution is not None and resolution > 0 else None,
    }
