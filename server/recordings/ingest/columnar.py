"""Spikes and presentations from two CSV or Parquet files.

CSV is read by pyarrow (fast path, millions of rows per second). When pyarrow rejects a
file, the file is re-read with the csv module only to find the first bad row and column,
so the client is told exactly where the problem is. A CSV file must end with a line break
(every CSV writer ends its last row with one): a file cut off mid-row would otherwise parse as
valid rows with a shortened last number. A UTF-8 byte-order mark is skipped.

Parquet is compressed, so its size on disk says little about what it expands to: before anything
is decoded, the row count and decompressed sizes its footer declares are held against a budget
(``server.recordings.ingest.limits``), only the needed columns are read, and text columns are read
dictionary-encoded and their longest value checked before one value is expanded per row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from itloop.errors import InvalidUpload
from server.recordings.ingest.limits import check_decoded_size
from server.recordings.ingest.validate import MAX_EVENT_ID_CHARS, ParsedUpload

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
MAX_HEADER_BYTES = 4096  # a header names at most four columns
MAX_FIELD_CHARS = 1 << 16  # longer than any valid field; the csv module's own limit is 128 KiB
# Bytes per row once decoded: numbers 8, booleans 1; text that becomes one Python string per row
# (event ids, image hashes) about 80; site ids stay dictionary-encoded (an 8-byte index per row).
DECODED_ROW_BYTES = {"site_id": 8, "time_s": 8, "event_id": 80, "image_sha256": 80, "onset_s": 8}


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _locate_csv_error(path: Path, label: str, types: dict[str, pa.DataType]) -> str:
    """Walk the CSV row by row and describe the first malformed row (1-based, header = row 1)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            return _first_bad_row(reader, label, types)
        except csv.Error as exc:  # a field longer than the csv module's limit, a stray quote
            return f"{label}: row {reader.line_num}: {exc}"


def _first_bad_row(reader: Any, label: str, types: dict[str, pa.DataType]) -> str:
    """The first malformed row of ``reader`` described, or a general message."""
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
                    return f"{label}: row {n}, column {name!r}: {_shown(value, 60)} is not a number"
            elif kind == pa.bool_() and v.lower() not in _TRUE | _FALSE:
                return f"{label}: row {n}, column {name!r}: {_shown(value, 60)} is not true/false"
            elif kind == pa.string() and not v:
                return f"{label}: row {n}, column {name!r} is empty"
            elif len(value) > MAX_FIELD_CHARS:
                return f"{label}: row {n}, column {name!r} has {len(value)} characters"
    return f"{label}: the CSV file could not be parsed"


def _shown(text: str, limit: int = 120) -> str:
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def _check_csv_ends(path: Path, label: str) -> None:
    """A CSV file ends with a line break; one that does not was cut off mid-row."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        if size == 0:
            raise InvalidUpload(f"{label}: the file is empty")
        fh.seek(size - 1)
        last = fh.read(1)
    if last not in (b"\n", b"\r"):
        raise InvalidUpload(
            f"{label}: the file does not end with a line break, so its last row looks cut off; "
            "was the file truncated (an interrupted copy or upload)? Send the complete file"
        )


def _read_header(path: Path, label: str, types: dict[str, pa.DataType]) -> list[str]:
    """The header's column names (BOM skipped), read within ``MAX_HEADER_BYTES``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.readline(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise InvalidUpload(f"{label}: cannot read the file") from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise InvalidUpload(
            f"{label}: the first line is longer than {MAX_HEADER_BYTES} bytes; expected a header "
            f"naming the columns {', '.join(types)}"
        )
    head = raw.decode("utf-8-sig", errors="replace")
    try:
        header = [h.strip() for h in next(csv.reader([head]), [])]
    except csv.Error as exc:
        raise InvalidUpload(f"{label}: the header line is not valid CSV ({exc})") from None
    missing = [c for c in types if c not in header and c not in OPTIONAL]
    if missing:
        raise InvalidUpload(
            f"{label}: missing column(s) {', '.join(missing)}; the header is {_shown(head.strip())}, "
            f"expected {', '.join(types)}"
        )
    return header


def _read_csv(path: Path, label: str, types: dict[str, pa.DataType]) -> pa.Table:
    header = _read_header(path, label, types)
    _check_csv_ends(path, label)
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
    except (pa.ArrowException, UnicodeDecodeError) as exc:
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


def _parquet_error(label: str, exc: Exception) -> InvalidUpload:
    # Arrow's messages may name the server's temporary file; keep only its first line.
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return InvalidUpload(f"{label}: the Parquet file could not be read ({reason})")


def _open_parquet(path: Path, label: str, types: dict[str, pa.DataType]) -> pa.Table:
    """The needed columns of a Parquet file, after its declared sizes passed the budget."""
    try:
        meta = pq.ParquetFile(path)
        names = meta.schema_arrow.names
        missing = [c for c in types if c not in names and c not in OPTIONAL]
        if missing:
            shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            raise InvalidUpload(f"{label}: missing column(s) {', '.join(missing)}; found {shown}")
        wanted = [c for c in types if c in names]
        indices = [names.index(c) for c in wanted]
        rows = meta.metadata.num_rows
        stored = sum(
            meta.metadata.row_group(g).column(i).total_uncompressed_size
            for g in range(meta.metadata.num_row_groups)
            for i in indices
        )
        decoded = max(stored, rows * sum(DECODED_ROW_BYTES.get(c, 8) for c in wanted))
        check_decoded_size(label, decoded, path.stat().st_size, f"{rows} rows")
        text = [c for c in wanted if pa.types.is_string(meta.schema_arrow.field(c).type)]
        table = pq.read_table(path, columns=wanted, read_dictionary=text)
    except InvalidUpload:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise _parquet_error(label, exc) from exc
    for name in text:
        for chunk in table[name].chunks:
            longest = pc.max(pc.utf8_length(chunk.dictionary)).as_py() if len(chunk.dictionary) else 0
            if longest and longest > MAX_EVENT_ID_CHARS:
                raise InvalidUpload(
                    f"{label}: column {name!r} holds a value of {longest} characters; at most "
                    f"{MAX_EVENT_ID_CHARS} are allowed"
                )
    return table


def _read_table(path: Path, label: str, types: dict[str, pa.DataType]) -> pa.Table:
    if not is_parquet(path):
        table = _read_csv(path, label, types)
    else:
        table = _open_parquet(path, label, types)
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
        raise InvalidUpload(
            f"spikes: {_row_label(spikes, i)}, column 'time_s': {float(times[i])!r} is not finite"
        )
    onset = pt["onset_s"].to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(onset)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidUpload(
            f"presentations: {_row_label(presentations, i)}, column 'onset_s': "
            f"{float(onset[i])!r} is not finite"
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
