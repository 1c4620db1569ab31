"""Bulk writes at array speed: PostgreSQL ``COPY`` from a pre-formatted text buffer, SQLite executemany.

One ORM object per row costs ~50 µs; a session has ~10^5 response rows, so ingest
writes columns straight to the driver instead. Columns are numpy arrays or lists;
the order of ``columns`` is the order of the table columns written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

Column = np.ndarray | Sequence[Any]

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text_column(values: Column) -> list[str]:
    """Format one column for COPY text format (numbers shortest round-trip, ``\\N`` for None)."""
    if isinstance(values, np.ndarray):
        if values.dtype == np.bool_:
            return np.where(values, "t", "f").tolist()
        if values.dtype.kind in "iuf":
            # numpy's str() of float64 is the shortest string that round-trips exactly.
            return values.astype(str).tolist()
        values = values.tolist()
    out: list[str] = []
    for v in values:
        if v is None:
            out.append("\\N")
        elif isinstance(v, bool):
            out.append("t" if v else "f")
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append("\\\\x" + bytes(v).hex())
        elif isinstance(v, str):
            out.append(v.translate(_ESCAPES))
        else:
            out.append(repr(v) if isinstance(v, float) else str(v))
    return out


def copy_text(columns: Sequence[Column]) -> str:
    """The COPY text-format payload for equally long columns."""
    formatted = [_text_column(c) for c in columns]
    if not formatted or not formatted[0]:
        return ""
    return "\n".join(map("\t".join, zip(*formatted, strict=True))) + "\n"


_PG_BINARY = {
    "big_integer": ">i8",
    "integer": ">i4",
    "small_integer": ">i2",
    "float": ">f8",
    "double": ">f8",
    "boolean": "?",
}
BYTEA = "large_binary"


def _kind(table: Table, name: str) -> str:
    """SQLAlchemy's name for a column's type; a foreign key without its own type takes its target's."""
    col = table.c[name]
    kind = str(col.type.__visit_name__)
    if kind == "null" and col.foreign_keys:
        kind = str(next(iter(col.foreign_keys)).column.type.__visit_name__)
    return kind


def _binary_dtype(table: Table, names: list[str]) -> np.dtype | None:
    """Big-endian tuple layout for PostgreSQL binary COPY, when every column is a fixed-width number."""
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    for k in names:
        kind = _PG_BINARY.get(_kind(table, k))
        if kind is None:
            return None
        fields += [(f"len_{k}", ">i4"), (k, kind)]
    return np.dtype(fields)


def copy_binary(table: Table, columns: Mapping[str, Column]) -> bytes | None:
    """The binary COPY payload built with one numpy structured array (no per-row Python), or None."""
    names = list(columns)
    dtype = _binary_dtype(table, names)
    if dtype is None:
        return None
    n = len(next(iter(columns.values())))
    rows = np.empty(n, dtype=dtype)
    rows["nfields"] = len(names)
    for k in names:
        rows[f"len_{k}"] = dtype[k].itemsize
        rows[k] = np.asarray(columns[k])
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + rows.tobytes() + (-1).to_bytes(2, "big", signed=True)


def _copy_bytea_rows(table: Table, columns: Mapping[str, Column]) -> bytes | None:
    """Binary COPY for few rows with integer and bytea columns (spike trains: raw bytes, no hex)."""
    names = list(columns)
    kinds = [_kind(table, k) for k in names]
    if BYTEA not in kinds:
        return None
    parts = [b"PGCOPY\n\xff\r\n\x00", bytes(8)]
    lists = [list(columns[k]) for k in names]
    for row in zip(*lists, strict=True):
        parts.append(len(names).to_bytes(2, "big"))
        for kind, v in zip(kinds, row, strict=True):
            if v is None:
                parts.append((-1).to_bytes(4, "big", signed=True))
            elif kind == BYTEA:
                b = bytes(v)
                parts += [len(b).to_bytes(4, "big"), b]
            elif kind == "big_integer":
                parts += [(8).to_bytes(4, "big"), int(v).to_bytes(8, "big", signed=True)]
            elif kind == "integer":
                parts += [(4).to_bytes(4, "big"), int(v).to_bytes(4, "big", signed=True)]
            else:
                return None
    parts.append((-1).to_bytes(2, "big", signed=True))
    return b"".join(parts)


def insert_columns(session: Session, table: Table, columns: Mapping[str, Column]) -> int:
    """Insert rows given column-wise, in the session's transaction; returns the row count."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        return 0
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        try:
            return _copy_postgresql(conn, table, columns, names, n)
        except DBAPIError:
            raise
        except Exception as exc:
            dbapi = conn.dialect.loaded_dbapi
            if not isinstance(exc, dbapi.Error):
                raise
            # The driver's own error (COPY bypasses SQLAlchemy): wrap it as SQLAlchemy would
            # (UniqueViolation -> IntegrityError, a value too long -> DataError), so the API's
            # error mapping answers a 409 or 422, not a bare 500.
            raise DBAPIError.instance(
                f'COPY "{table.name}"', None, exc, dbapi.Error, dialect=conn.dialect
            ) from exc
    lists = [c.tolist() if isinstance(c, np.ndarray) else list(c) for c in columns.values()]
    rows = [dict(zip(names, r, strict=True)) for r in zip(*lists, strict=True)]
    conn.execute(insert(table), rows)
    return n


def _copy_postgresql(conn: Any, table: Table, columns: Mapping[str, Column], names: list[str], n: int) -> int:
    """COPY the rows in (binary when every column allows it, text otherwise)."""
    raw = conn.connection.dbapi_connection
    cols = ", ".join(f'"{k}"' for k in names)
    binary = copy_binary(table, columns) or _copy_bytea_rows(table, columns)
    if binary is not None:
        with raw.cursor() as cur:
            with cur.copy(f'COPY "{table.name}" ({cols}) FROM STDIN (FORMAT BINARY)') as cp:
                view, step = memoryview(binary), 8 << 20
                for i in range(0, len(view), step):
                    cp.write(view[i : i + step])
        return n
    payload = copy_text([columns[k] for k in names])
    with raw.cursor() as cur:
        with cur.copy(f'COPY "{table.name}" ({cols}) FROM STDIN') as cp:
            # Large payloads in slices keep peak memory near one slice, not the whole encoding.
            step = 8 << 20
            for i in range(0, len(payload), step):
                cp.write(payload[i : i + step])
    return n
