"""How far an uploaded file may expand when it is decoded: the defence against decompression bombs.

Parquet and HDF5 (NWB) files are compressed: a 14 kB Parquet file can declare 30 million rows, an
HDF5 file a dataset of gigabytes of zeros in a few kilobytes of chunks. The upload limit bounds
the bytes sent, not the memory their decoding takes, so each reader first reads only what the file
declares (row counts, dataset shapes and types, decompressed sizes: metadata, no data) and refuses
a file whose decoded size would pass its budget, before materialising anything:

    budget = max(DECODED_FLOOR_BYTES, MAX_EXPANSION * size of the file on disk)

Real recordings compress by a few times at most (spike times are close to random doubles), so a
factor of ``MAX_EXPANSION`` (32) leaves them far inside their budget, while a bomb, which expands by
hundreds or thousands of times, is refused with a 422 that says what it declared. The floor keeps
small honest files (a few hundred thousand rows) free of the ratio.
"""

from __future__ import annotations

from itloop.errors import InvalidUpload

MAX_EXPANSION = 32
DECODED_FLOOR_BYTES = 64 * 1024 * 1024


def decoded_budget(file_bytes: int) -> int:
    """The most bytes a file of ``file_bytes`` may decode to."""
    return max(DECODED_FLOOR_BYTES, MAX_EXPANSION * file_bytes)


def check_decoded_size(label: str, decoded_bytes: int, file_bytes: int, what: str) -> None:
    """Refuse (422) a file whose declared decoded size passes its budget; ``what`` names the declaration."""
    budget = decoded_budget(file_bytes)
    if decoded_bytes > budget:
        raise InvalidUpload(
            f"{label}: the file declares {what}, about {decoded_bytes / 1e6:,.0f} MB once decoded, from "
            f"{file_bytes / 1e3:,.1f} kB on disk; at most {budget / 1e6:,.0f} MB (the larger of "
            f"{DECODED_FLOOR_BYTES / 1e6:,.0f} MB and {MAX_EXPANSION} times the file) is accepted, so "
            "this looks like a decompression bomb or a corrupted file"
        )
