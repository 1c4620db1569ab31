"""Reading an upload before the database is written: its format, its options, its NWB units and metadata.

Everything here runs before the first write of an ingest (or only touches the session row),
so a refused upload leaves nothing behind: the format is picked from the multipart fields,
the NWB options of the query string are checked, NWB units are given their sites, and what
the file says about the session is kept for the NWB export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import InvalidInput, InvalidUpload
from server.lab.tables import Array, Site, Subject
from server.recordings.ingest.validate import ParsedUpload
from server.recordings.sessions import NWB_FIELDS
from server.recordings.tables import RecordingSession


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


def assign_units(
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


def file_metadata(upload: ParsedUpload) -> dict[str, Any] | None:
    """What an NWB upload says beyond spikes and presentations, electrodes keyed by site id."""
    if upload.file_meta is None:
        return None
    electrodes: dict[str, dict[str, Any]] = {}
    for unit, site_id in zip(upload.units or [], upload.site_labels, strict=False):
        if unit.electrode is not None and site_id not in electrodes:
            electrodes[site_id] = {k: v for k, v in unit.electrode.items() if k not in ("id", "site_id")}
    return {**upload.file_meta, "electrodes": electrodes}


def keep_file_metadata(rec: RecordingSession, meta: dict[str, Any] | None) -> None:
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
