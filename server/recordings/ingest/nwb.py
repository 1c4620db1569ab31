"""Spikes and presentations from one NWB 2 file, read with pynwb.

Layout: ``nwbfile.units`` with ``spike_times`` and a ``site_id`` column (several units may
share a site: their trains are merged); a ``TimeIntervals`` table named ``presentations``
with ``start_time``, ``stop_time``, ``image_sha256`` and optional ``event_id`` (default:
the row index as a string) and ``fixation_ok``. The table is looked for in
``nwbfile.intervals``, then ``nwbfile.stimulus``, then every processing module.

Before pynwb opens the file, :func:`check_hdf5` walks its structure (metadata only, no data):
the datasets' declared sizes together must fit the decoded-size budget
(``server.recordings.ingest.limits``), and links or storage that point outside the file (external
links, external raw storage, virtual datasets) are refused, so an upload can neither expand into
gigabytes from a few compressed kilobytes nor make the server read other files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from itloop.errors import InvalidUpload
from server.recordings.ingest.limits import check_decoded_size
from server.recordings.ingest.validate import ParsedUpload

log = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_OBJECTS = 100_000  # groups, datasets and links: an NWB file of one session has hundreds


def is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _find_presentations(nwb: Any) -> Any:
    if "presentations" in (nwb.intervals or {}):
        return nwb.intervals["presentations"]
    if "presentations" in (nwb.stimulus or {}):
        return nwb.stimulus["presentations"]
    for module in (nwb.processing or {}).values():
        if "presentations" in module.data_interfaces:
            return module.data_interfaces["presentations"]
    return None


def _parse(nwb: Any, name: str) -> ParsedUpload:
    units = nwb.units
    if units is None:
        raise InvalidUpload(f"{name}: the NWB file has no units table (nwbfile.units)")
    if "spike_times" not in units.colnames:
        raise InvalidUpload(f"{name}: the units table has no spike_times column")
    if "site_id" not in units.colnames:
        raise InvalidUpload(
            f"{name}: the units table has no site_id column; add one naming each unit's registered site"
        )
    index = units["spike_times"]  # VectorIndex: cumulative end offsets into the flat times
    ends = np.asarray(index.data[:], dtype=np.int64)
    flat = np.asarray(index.target.data[:], dtype=np.float64)
    unit_sites = [s.strip() for s in _strings(units["site_id"].data[:])]
    if len(unit_sites) != len(ends):
        raise InvalidUpload(f"{name}: units table columns have different lengths")
    counts = np.diff(np.concatenate([[0], ends]))
    if (counts < 0).any() or (len(ends) and ends[-1] != len(flat)):
        raise InvalidUpload(f"{name}: units spike_times_index is inconsistent with spike_times")
    labels = sorted(set(unit_sites))
    pos = {s: i for i, s in enumerate(labels)}
    spike_site = np.repeat(np.asarray([pos[s] for s in unit_sites], dtype=np.int64), counts)
    empty = [s for s, c in zip(unit_sites, counts, strict=True) if c == 0]

    table = _find_presentations(nwb)
    if table is None:
        raise InvalidUpload(
            f"{name}: no TimeIntervals table named 'presentations' (looked in intervals, stimulus "
            "and processing modules)"
        )
    cols = set(table.colnames)
    for required in ("start_time", "image_sha256"):
        if required not in cols:
            raise InvalidUpload(f"{name}: the presentations table has no {required} column")
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
        raise InvalidUpload(f"{name}: presentations table columns have different lengths")
    for i, e in enumerate(event_ids):
        if not e:
            raise InvalidUpload(f"{name}: presentations row {i + 1} has an empty event_id")
    return ParsedUpload(
        site_labels=labels,
        spike_site=spike_site,
        spike_times=flat,
        event_ids=event_ids,
        image_sha256=images,
        onset_s=onset,
        stop_s=stop,
        fixation_ok=fix,
        source=name,
        empty_sites=empty,
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
    except Exception as exc:  # h5py raises many types for damaged files
        log.info("rejected HDF5 upload at the structure check: %s", exc)
        first = str(exc).splitlines()[0][:300].replace(str(path), name) if str(exc) else ""
        raise InvalidUpload(
            f"{name}: the NWB file could not be read ({type(exc).__name__}: {first}); is it complete "
            "(not truncated) and a valid NWB 2 file?"
        ) from exc
    if problem is not None:
        raise InvalidUpload(f"{name}: {problem}")
    check_decoded_size(name, declared, path.stat().st_size, "datasets of this total size")


def read_nwb(path: Path, name: str = "file") -> ParsedUpload:
    """Parse an NWB upload; any read failure (truncated, corrupted, not NWB) is a 422 naming the cause."""
    from pynwb import NWBHDF5IO

    if not is_hdf5(path):
        raise InvalidUpload(f"{name}: not an NWB (HDF5) file: the HDF5 signature is missing at byte 0")
    check_hdf5(path, name)
    try:
        with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
            nwb = io.read()
            return _parse(nwb, name)
    except InvalidUpload:
        raise
    except Exception as exc:  # h5py/hdmf raise many types for damaged files
        log.info("rejected NWB upload: %s", exc)
        # h5py names the file in its messages: the server's temporary path is none of the client's business
        first = str(exc).splitlines()[0][:300].replace(str(path), name) if str(exc) else ""
        raise InvalidUpload(
            f"{name}: the NWB file could not be read ({type(exc).__name__}: {first}); "
            "is it complete (not truncated) and a valid NWB 2 file?"
        ) from exc
