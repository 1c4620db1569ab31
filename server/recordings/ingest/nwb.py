"""Spikes and presentations from one NWB 2 file, read with pynwb.

Layout: ``nwbfile.subject`` (required); ``nwbfile.units`` with ``spike_times`` and either a
``site_id`` column or electrodes that map to registered sites (NeuroConv/SpikeInterface files:
:mod:`server.recordings.ingest.unitmap`; several units may share a site: their trains are
merged); a ``TimeIntervals`` table named ``presentations`` (or the name the upload gives) with
``start_time``, ``stop_time``, ``image_sha256`` and optional ``event_id`` (default: the row index
as a string) and ``fixation_ok``. The table is looked for in ``nwbfile.intervals``, then
``nwbfile.stimulus``, then every processing module. The file's session, subject, device and
electrode metadata come along (:mod:`server.recordings.ingest.nwb_meta`).

Before pynwb opens the file, :func:`check_hdf5` walks its structure (metadata only, no data):
the datasets' declared sizes together must fit the decoded-size budget
(``server.recordings.ingest.limits``), and links or storage that point outside the file (external
links, external raw storage, virtual datasets) are refused, so an upload can neither expand into
gigabytes from a few compressed kilobytes nor make the server read other files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from server.errors import InvalidUpload
from server.recordings.ingest.limits import check_decoded_size
from server.recordings.ingest.nwb_meta import electrode_rows, file_meta
from server.recordings.ingest.unitmap import UnitRef
from server.recordings.ingest.validate import ParsedUpload

T = TypeVar("T")

log = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_OBJECTS = 100_000  # groups, datasets and links: an NWB file of one session has hundreds


def is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


DEFAULT_TABLE = "presentations"


def _interval_tables(nwb: Any) -> dict[str, Any]:
    """Every TimeIntervals-like table by name: intervals, then stimulus, then processing modules."""
    from hdmf.common import DynamicTable

    found: dict[str, Any] = {}
    for name, obj in (nwb.intervals or {}).items():
        found.setdefault(name, obj)
    for name, obj in (nwb.stimulus or {}).items():
        if isinstance(obj, DynamicTable):
            found.setdefault(name, obj)
    for module in (nwb.processing or {}).values():
        for name, obj in module.data_interfaces.items():
            if isinstance(obj, DynamicTable) and "start_time" in obj.colnames:
                found.setdefault(name, obj)
    return found


def _find_presentations(nwb: Any, table_name: str, name: str) -> Any:
    tables = _interval_tables(nwb)
    if table_name in tables:
        return tables[table_name]
    have = ", ".join(repr(t) for t in sorted(tables)) or "none"
    raise InvalidUpload(
        f"{name}: no TimeIntervals table named {table_name!r} (looked in intervals, stimulus and "
        f"processing modules; the file has {have}); name the presentations table with "
        "?presentations_table=NAME"
    )


def _unit_refs(nwb: Any, units: Any, n_units: int) -> list[UnitRef]:
    """Each unit's id, name, site_id column and first electrode (for :mod:`unitmap`)."""
    cols = set(units.colnames)
    ids = [str(int(i)) for i in units.id[:]]
    names = [s.strip() for s in _strings(units["unit_name"].data[:])] if "unit_name" in cols else []
    sites = [s.strip() for s in _strings(units["site_id"].data[:])] if "site_id" in cols else []
    electrodes = electrode_rows(nwb)
    first: list[int | None] = [None] * n_units
    if "electrodes" in cols and electrodes:
        index = units["electrodes"]
        ends = np.asarray(index.data[:], dtype=np.int64)
        flat = np.asarray(index.target.data[:], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        for k in range(min(n_units, len(ends))):
            if ends[k] > starts[k] and 0 <= flat[starts[k]] < len(electrodes):
                first[k] = int(flat[starts[k]])
    return [
        UnitRef(
            index=k,
            unit_id=ids[k] if k < len(ids) else str(k),
            name=names[k] if names else "",
            site_id=sites[k] if sites else "",
            electrode=electrodes[first[k]] if first[k] is not None else None,  # type: ignore[index]
        )
        for k in range(n_units)
    ]


def parse_units(nwb: Any, name: str) -> tuple[list[UnitRef], np.ndarray, np.ndarray, np.ndarray]:
    """The units table as (unit refs, unit index per spike, spike times, spikes per unit).

    Its own function so that uploads whose presentations come from elsewhere (sync pulses and
    the rig's events, ``server.recordings.alignment``) read units exactly as full uploads do;
    units are resolved to sites later, by the service (``ingest/unitmap.py``).
    """
    units = nwb.units
    if units is None:
        raise InvalidUpload(f"{name}: the NWB file has no units table (nwbfile.units)")
    if "spike_times" not in units.colnames:
        raise InvalidUpload(f"{name}: the units table has no spike_times column")
    index = units["spike_times"]  # VectorIndex: cumulative end offsets into the flat times
    ends = np.asarray(index.data[:], dtype=np.int64)
    flat = np.asarray(index.target.data[:], dtype=np.float64)
    refs = _unit_refs(nwb, units, len(ends))
    counts = np.diff(np.concatenate([[0], ends]))
    if (counts < 0).any() or (len(ends) and ends[-1] != len(flat)):
        raise InvalidUpload(f"{name}: units spike_times_index is inconsistent with spike_times")
    # One label per unit (resolved to site ids by the service, server.recordings.ingest.unitmap);
    # units of one site are merged when the upload is cleaned.
    spike_site = np.repeat(np.arange(len(ends), dtype=np.int64), counts)
    return refs, spike_site, flat, counts


def _parse(nwb: Any, name: str, table_name: str = DEFAULT_TABLE) -> ParsedUpload:
    meta = file_meta(nwb, name)  # refuses a file without a subject before reading any data
    refs, spike_site, flat, counts = parse_units(nwb, name)

    table = _find_presentations(nwb, table_name, name)
    cols = set(table.colnames)
    for required in ("start_time", "image_sha256"):
        if required not in cols:
            raise InvalidUpload(f"{name}: the {table_name!r} table has no {required} column")
    onset = np.asarray(table["start_time"].data[:], dtype=np.float64)
    n = len(onset)
    stop = (
        np.asarray(table["stop_time"].data[:], dtype=np.float64)
        if "stop_time" in cols
        else np.full(n, np.nan)
    )
    images = [s.strip().lower() for s in _strings(table["image_sha256"].data[:])]
    event_ids = (
        [s.strip() for s in _strings(table["event_id"].data[:])]
        if "event_id" in cols
        else [str(i) for i in range(n)]
    )
    fix = np.asarray(table["fixation_ok"].data[:]).astype(bool) if "fixation_ok" in cols else np.ones(n, bool)
    if not (len(images) == len(event_ids) == len(fix) == len(stop) == n):
        raise InvalidUpload(f"{name}: {table_name!r} table columns have different lengths")
    for i, e in enumerate(event_ids):
        if not e:
            raise InvalidUpload(f"{name}: {table_name!r} row {i + 1} has an empty event_id")
    return ParsedUpload(
        site_labels=[u.site_id for u in refs],
        spike_site=spike_site,
        spike_times=flat,
        event_ids=event_ids,
        image_sha256=images,
        onset_s=onset,
        stop_s=stop,
        fixation_ok=fix,
        source=name,
        empty_sites=[],
        units=refs,
        unit_counts=counts,
        file_meta=meta,
    )


def check_hdf5(path: Path, name: str = "file") -> None:
    """Refuse (422) an HDF5 file that declares too much data or points outside itself.

    Reads only the file's structure: link and dataset headers, never a dataset's values.
    """
    import h5py

    declared = 0
    seen = 0
    problem: str | None = None

    def visit(link_name: str, link: Any) -> bool | None:
        nonlocal declared, seen, problem
        seen += 1
        if seen > MAX_OBJECTS:
            problem = f"the file holds more than {MAX_OBJECTS} objects"
            return True
        if isinstance(link, h5py.ExternalLink):
            problem = f"{link_name!r} is an external link to another file; links outside the file are refused"
            return True
        if not isinstance(link, h5py.HardLink):
            return None  # soft links name objects inside the file, visited on their own
        obj = h5.get(link_name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual or obj.external:
                problem = f"dataset {link_name!r} keeps its data outside the file; that is refused"
                return True
            declared += int(np.prod(obj.shape, dtype=np.float64) * max(obj.dtype.itemsize, 1))
        return None

    try:
        with h5py.File(path, "r") as h5:
            h5.visititems_links(visit)
    except Exception as exc:  # noqa: BLE001 - h5py raises many types for damaged files
        log.info("rejected HDF5 upload at the structure check: %s", exc)
        first = str(exc).splitlines()[0][:300].replace(str(path), name) if str(exc) else ""
        raise InvalidUpload(
            f"{name}: the NWB file could not be read ({type(exc).__name__}: {first}); is it complete "
            "(not truncated) and a valid NWB 2 file?"
        ) from exc
    if problem is not None:
        raise InvalidUpload(f"{name}: {problem}")
    check_decoded_size(name, declared, path.stat().st_size, "datasets of this total size")


def read_nwb(path: Path, name: str = "file", table_name: str = DEFAULT_TABLE) -> ParsedUpload:
    """Parse an NWB upload; any read failure (truncated, corrupted, not NWB) is a 422 naming the cause.

    ``table_name`` names the TimeIntervals table of presentations (default ``presentations``).
    Units still need their sites: :func:`server.recordings.ingest.unitmap.map_units`.
    """
    return with_nwb(path, name, lambda nwb: _parse(nwb, name, table_name))


def with_nwb(path: Path, name: str, read: Callable[[Any], T]) -> T:
    """``read(nwbfile)`` on an uploaded file, checked first (HDF5 signature, declared sizes, no
    external links); any failure to read it (truncated, corrupted, not NWB) is a 422 naming the
    cause, never the server's temporary path."""
    from pynwb import NWBHDF5IO

    if not is_hdf5(path):
        raise InvalidUpload(f"{name}: not an NWB (HDF5) file: the HDF5 signature is missing at byte 0")
    check_hdf5(path, name)
    try:
        with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
            return read(io.read())
    except InvalidUpload:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py/hdmf raise many types for damaged files
        log.info("rejected NWB upload: %s", exc)
        # h5py names the file in its messages: the server's temporary path is none of the client's business
        first = str(exc).splitlines()[0][:300].replace(str(path), name) if str(exc) else ""
        raise InvalidUpload(
            f"{name}: the NWB file could not be read ({type(exc).__name__}: {first}); "
            "is it complete (not truncated) and a valid NWB 2 file?"
        ) from exc
