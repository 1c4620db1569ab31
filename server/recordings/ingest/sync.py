"""Sync pulses from upload files: a CSV/Parquet table, or a TimeSeries / TimeIntervals in an NWB file.

A sync upload (``server.recordings.alignment``) carries spikes and the recorder's sync pulses
instead of presentations. Pulses are rising edges (``time_s``: the flips that showed images, on
the recorder's clock) and, when known, falling edges (``stop_s``: the flips that removed them).
In NWB they may be a sampled TTL or photodiode trace (edges at mid-level), a series of level
changes, an event series (every timestamp a pulse), or an interval table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidUpload
from server.recordings.ingest.validate import ParsedUpload

log = logging.getLogger(__name__)


def read_sync_table(path: Path, label: str = "sync") -> tuple[np.ndarray, np.ndarray | None]:
    """Rising (``time_s``) and optional falling (``stop_s``) edges from a CSV or Parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from server.recordings.ingest.columnar import is_parquet
    from server.recordings.ingest.limits import check_decoded_size

    try:
        if is_parquet(path):
            meta = pq.ParquetFile(path)
            check_decoded_size(label, meta.metadata.num_rows * 16, path.stat().st_size, "rows")
            names = meta.schema_arrow.names
            table = pq.read_table(path, columns=[c for c in ("time_s", "stop_s") if c in names])
        else:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={"time_s": pa.float64(), "stop_s": pa.float64()},
                    include_columns=["time_s", "stop_s"],
                    include_missing_columns=True,
                ),
            )
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidUpload(
            f"{label}: the sync file could not be read ({reason}); expected a CSV or Parquet file with a "
            "time_s column (pulse rising edges, seconds on the recorder's clock) and optionally stop_s"
        ) from exc
    if "time_s" not in table.column_names or table["time_s"].null_count == len(table):
        raise InvalidUpload(
            f"{label}: no time_s column (pulse rising edges, seconds on the recorder's clock)"
        )
    on = table["time_s"].to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(on)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidUpload(f"{label}: row {i + 1}, column 'time_s' is empty or not a finite number")
    off = None
    if "stop_s" in table.column_names and table["stop_s"].null_count < len(table):
        off = table["stop_s"].to_numpy(zero_copy_only=False).astype(np.float64)
    return on, off


def _edges(times: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Pulse edges from a sampled TTL/photodiode trace, or one pulse per timestamp for an event series."""
    if data.ndim != 1 or len(data) != len(times) or len(data) == 0:
        return times, None
    lo, hi = float(np.min(data)), float(np.max(data))
    if not hi > lo:  # one level only (an event series: data all 1): each timestamp is a pulse
        return times, None
    high = data > (lo + hi) / 2
    before = np.concatenate([[False], high[:-1]])  # low before the first sample: it may be a rise
    rise = np.flatnonzero(high & ~before)
    fall = np.flatnonzero(~high & before)
    on = times[rise]
    off = np.full(len(on), np.nan)
    k = np.searchsorted(fall, rise)
    ok = k < len(fall)
    off[ok] = times[fall[k[ok]]]
    return on, off


def _find_object(nwb: Any, name: str) -> Any:
    places = [nwb.acquisition, nwb.stimulus, nwb.intervals or {}]
    places += [m.data_interfaces for m in (nwb.processing or {}).values()]
    for place in places:
        if place and name in place:
            return place[name]
    return None


def read_nwb_units_and_sync(
    path: Path, series: str | None, label: str = "file"
) -> tuple[ParsedUpload, tuple[np.ndarray, np.ndarray | None] | None]:
    """Units from an NWB file and the pulses of its object named ``series`` (None: units only).

    ``series`` may be a TimeSeries (a sampled TTL or photodiode trace: rising and falling
    edges at mid-level; or an event series whose every timestamp is a pulse) or a
    TimeIntervals table (``start_time``, ``stop_time``).
    """
    from server.recordings.ingest.nwb import file_meta, parse_units, with_nwb

    def read(nwb: Any) -> tuple[Any, ...]:
        meta = file_meta(nwb, label)  # a file without a subject is refused, as in full uploads
        pulses = None if series is None else _nwb_pulses(nwb, series, label)
        return meta, *parse_units(nwb, label), pulses

    meta, refs, spike_site, flat, counts, pulses = with_nwb(path, label, read)
    spikes = ParsedUpload(
        site_labels=[u.site_id for u in refs],
        spike_site=spike_site,
        spike_times=flat,
        event_ids=[],
        image_sha256=[],
        onset_s=np.empty(0),
        stop_s=np.empty(0),
        fixation_ok=np.empty(0, bool),
        source=label,
        empty_sites=[],
        units=refs,
        unit_counts=counts,
        file_meta=meta,
    )
    return spikes, pulses


def read_nwb_sync(path: Path, series: str, label: str = "sync") -> tuple[np.ndarray, np.ndarray | None]:
    """Only the pulses of the NWB object named ``series`` (for ``itloop align``: no units needed)."""
    from pynwb import NWBHDF5IO

    from server.recordings.ingest.nwb import check_hdf5, is_hdf5

    if not is_hdf5(path):
        raise InvalidUpload(f"{label}: not an NWB (HDF5) file: the HDF5 signature is missing at byte 0")
    check_hdf5(path, label)
    try:
        with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
            return _nwb_pulses(io.read(), series, label)
    except InvalidUpload:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py/hdmf raise many types for damaged files
        first = str(exc).splitlines()[0][:300].replace(str(path), label) if str(exc) else ""
        raise InvalidUpload(
            f"{label}: the NWB file could not be read ({type(exc).__name__}: {first})"
        ) from exc


def _nwb_pulses(nwb: Any, series: str, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    obj = _find_object(nwb, series)
    if obj is None:
        raise InvalidUpload(
            f"{label}: no object named {series!r} for the sync pulses (looked in acquisition, "
            "stimulus, intervals and processing modules)"
        )
    if hasattr(obj, "colnames") and "start_time" in obj.colnames:
        on = np.asarray(obj["start_time"].data[:], dtype=np.float64)
        off = np.asarray(obj["stop_time"].data[:], dtype=np.float64) if "stop_time" in obj.colnames else None
        return on, off
    if hasattr(obj, "data") and hasattr(obj, "timestamps"):
        data = np.asarray(obj.data[:], dtype=np.float64)
        if obj.timestamps is not None:
            times = np.asarray(obj.timestamps[:], dtype=np.float64)
        else:
            times = float(obj.starting_time or 0.0) + np.arange(len(data)) / float(obj.rate)
        return _edges(times, data.ravel() if data.ndim == 2 and 1 in data.shape else data)
    raise InvalidUpload(
        f"{label}: {series!r} is a {type(obj).__name__}; sync pulses must be a TimeSeries or a "
        "TimeIntervals table"
    )


def read_spikes_only(path: Path) -> ParsedUpload:
    """The ``spikes`` file of a sync upload (same columns and checks as a CSV/Parquet upload)."""
    import pyarrow.compute as pc

    from server.recordings.ingest.columnar import SPIKE_COLUMNS, _read_table

    st = _read_table(path, "spikes", SPIKE_COLUMNS)
    encoded = pc.dictionary_encode(st["site_id"]).combine_chunks()
    times = st["time_s"].to_numpy().astype(np.float64, copy=False)
    return ParsedUpload(
        site_labels=[str(s).strip() for s in encoded.dictionary.to_pylist()],
        spike_site=encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
        spike_times=times,
        event_ids=[],
        image_sha256=[],
        onset_s=np.empty(0),
        stop_s=np.empty(0),
        fixation_ok=np.empty(0, bool),
        source="spikes",
    )


def parse_sync_upload(
    files: dict[str, Path], sync_series: str | None
) -> tuple[ParsedUpload, tuple[np.ndarray, np.ndarray | None], str]:
    """Spikes and pulses of a sync upload: (``spikes`` or NWB ``file``) + (``sync`` file or NWB series)."""
    if "presentations" in files:
        raise InvalidUpload(
            "a sync upload takes its presentations from the rig's events: send 'spikes' (or an NWB 'file') "
            "and the sync pulses, not 'presentations'"
        )
    if "file" in files and "spikes" in files:
        raise InvalidUpload("send the spikes once: either an NWB 'file' or a 'spikes' CSV/Parquet, not both")
    if "file" in files:
        if "sync" in files and sync_series is not None:
            raise InvalidUpload("name the sync pulses once: a 'sync' file or ?sync_series=, not both")
        spikes, pulses = read_nwb_units_and_sync(files["file"], None if "sync" in files else sync_series)
        if "sync" in files:
            pulses = read_sync_table(files["sync"])
        assert pulses is not None
        return spikes, pulses, "nwb+sync"
    if "spikes" not in files:
        raise InvalidUpload("a sync upload needs the spikes: a 'spikes' CSV/Parquet or an NWB 'file'")
    if "sync" not in files:
        raise InvalidUpload(
            "?sync_series= names a TimeSeries inside an NWB 'file'; with a 'spikes' CSV/Parquet send the "
            "pulses as a 'sync' file (columns time_s[, stop_s])"
        )
    from server.recordings.ingest.columnar import is_parquet

    fmt = "parquet" if is_parquet(files["spikes"]) else "csv"
    return read_spikes_only(files["spikes"]), read_sync_table(files["sync"]), f"{fmt}+sync"
