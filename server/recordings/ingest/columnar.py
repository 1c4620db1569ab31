"""Spikes and presentations from two CSV or Parquet files.

CSV is read by pyarrow (fast path, millions of rows per second). When pyarrow rejects a
file, the file is re-read with the csv module only to find the first bad row and column,
so the client is told exactly where the problem is.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from server.errors import InvalidUpload
from server.recordings.ingest.validate import ParsedUpload

SPIKE_COLUMNS = {"site_id": pa.string(), "time_s": pa.float64()}
PRESENTATION_COLUMNS = {
    "event_id": pa.string(),
    "image_sha256": pa.string(),
    "onset_s": pa.float64(),
    "fixation_ok": pa.bool_(),
}
OPTIONAL = {"fixation_ok"}
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _locate_csv_error(path: Path, label: str, types: dict[str, pa.DataType]) -> str:
    """Walk the CSV row by row and describe the first malformed row (1-based, header = row 1)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                return f"{label}: row {n} has {len(row)} fields, the header has {len(header)}"
            for name, value in zip(header, row, strict=True):
                kind = types.get(name)
                v = value.strip()
                if kind == pa.float64():
                    try:
                        float(v)
                    except ValueError:
                        return f"{label}: row {n}, column {name!r}: {value!r} is not a number"
                elif kind == pa.bool_() and v.lower() not in _TRUE | _FALSE:
                    return f"{label}: row {n}, column {name!r}: {value!r} is not true/false"
                elif kind == pa.string() and not v:
                    return f"{label}: row {n}, column {name!r} is empty"
    return f"{label}: the CSV file could not be parsed"


def _read_csv(path: Path, label: str, types: dict[str, pa.DataType]) -> pa.Table:
    try:
        with open(path, "rb") as fh:
            head = fh.readline().decode("utf-8", errors="replace")
    except OSError as exc:
        raise InvalidUpload(f"{label}: cannot read the file ({exc})") from exc
    header = [h.strip() for h in next(csv.reader([head]), [])]
    missing = [c for c in types if c not in header and c not in OPTIONAL]
    if missing:
        raise InvalidUpload(
            f"{label}: missing column(s) {', '.join(missing)}; the header is {head.strip()!r}, "
            f"expected {', '.join(types)}"
        )
    convert = pacsv.ConvertOptions(
        column_types={k: v for k, v in types.items() if k in header},
        include_columns=[c for c in types if c in header],
        strings_can_be_null=False,
        true_values=sorted(_TRUE | {v.upper() for v in _TRUE} | {v.title() for v in _TRUE}),
        false_values=sorted(_FALSE | {v.upper() for v in _FALSE} | {v.title() for v in _FALSE}),
    )
    try:
        return pacsv.read_csv(
            path, convert_options=convert, read_options=pacsv.ReadOptions(block_size=16 << 20)
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise InvalidUpload(_locate_csv_error(path, label, types)) from exc


def _compatible(source: pa.DataType, target: pa.DataType) -> bool:
    """Only lossless, meaningful casts: numbers to numbers, text to text, booleans to booleans.

    Arrow would also cast a boolean column to seconds (True -> 1.0) or numeric strings to
    floats; in a spike file those are mistakes to report, not to store.
    """
    t = pa.types
    if t.is_dictionary(source):
        source = source.value_type
    if t.is_boolean(target):
        return t.is_boolean(source)
    if t.is_floating(target) or t.is_integer(target):
        return (t.is_integer(source) or t.is_floating(source)) and not t.is_boolean(source)
    if t.is_string(target) or t.is_large_string(target):
        return t.is_string(source) or t.is_large_string(source) or t.is_integer(source)
    return True


def _read_table(path: Path, label: str, types: dict[str, pa.DataType]) -> pa.Table:
    if not is_parquet(path):
        table = _read_csv(path, label, types)
    else:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidUpload(f"{label}: the Parquet file could not be read ({exc})") from exc
        missing = [c for c in types if c not in table.column_names and c not in OPTIONAL]
        if missing:
            raise InvalidUpload(
                f"{label}: missing column(s) {', '.join(missing)}; found {', '.join(table.column_names)}"
            )
        cols = {}
        for name, kind in types.items():
            if name not in table.column_names:
                continue
            col = table[name]
            if not _compatible(col.type, kind):
                raise InvalidUpload(f"{label}: column {name!r} has type {col.type}; expected {kind}")
            try:
                cols[name] = col.cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidUpload(
                    f"{label}: column {name!r} ({col.type}) cannot be read as {kind}"
                ) from exc
        table = pa.table(cols)
    for name in table.column_names:
        nulls = table[name].is_null()
        if pc.any(nulls).as_py():
            row = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
            where = f"row {row + 2}" if not is_parquet(path) else f"row {row + 1}"
            raise InvalidUpload(f"{label}: {where}, column {name!r} is empty")
    return table


def _row_label(path: Path, i: int) -> str:
    return f"row {i + 2}" if not is_parquet(path) else f"row {i + 1}"


def read_columnar(spikes: Path, presentations: Path) -> ParsedUpload:
    """Parse the two files of a CSV/Parquet upload into arrays (no database checks yet)."""
    st = _read_table(spikes, "spikes", SPIKE_COLUMNS)
    pt = _read_table(presentations, "presentations", PRESENTATION_COLUMNS)
    encoded = pc.dictionary_encode(st["site_id"]).combine_chunks()
    labels = [str(s).strip() for s in encoded.dictionary.to_pylist()]
    spike_site = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    times = st["time_s"].to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(times)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidUpload(f"spikes: {_row_label(spikes, i)}, column 'time_s': {times[i]!r} is not finite")
    onset = pt["onset_s"].to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(onset)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidUpload(
            f"presentations: {_row_label(presentations, i)}, column 'onset_s': {onset[i]!r} is not finite"
        )
    n = len(onset)
    fix = (
        pt["fixation_ok"].to_numpy(zero_copy_only=False).astype(bool)
        if "fixation_ok" in pt.column_names
        else np.ones(n, bool)
    )
    event_ids = [s.strip() for s in pt["event_id"].to_pylist()]
    for i, e in enumerate(event_ids):
        if not e:
            raise InvalidUpload(f"presentations: {_row_label(presentations, i)}, column 'event_id' is empty")
    images = [s.strip().lower() for s in pt["image_sha256"].to_pylist()]
    return ParsedUpload(
        site_labels=labels,
        spike_site=spike_site,
        spike_times=times,
        event_ids=event_ids,
        image_sha256=images,
        onset_s=onset,
        stop_s=np.full(n, math.nan),
        fixation_ok=fix,
        source="spikes/presentations",
    )
