"""The one atomic file write: a temporary file in the target folder, then ``os.replace``.

A reader (or a crash) never sees a half-written file: either the old file or the complete new
one. ``durable`` also fsyncs the bytes and the folder, so the new file survives a power cut once
this returns (the object store wants that; caches do not need it). Lives in ``models/`` because
that is the bottom layer (standard library only here), so the feature cache, model artifacts,
the object store and backups all use this one helper.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: Path, *, durable: bool = False, prefix: str = ".part-") -> Iterator[BinaryIO]:
    """Write ``path`` through the yielded binary file; it appears only if the block succeeds.

    The temporary file is named ``<prefix>*.part`` in the same folder (so the rename never
    crosses file systems, and listings can skip leftovers by the prefix).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False, prefix: str = ".part-") -> None:
    """:func:`atomic_write` of a bytes object."""
    with atomic_write(path, durable=durable, prefix=prefix) as fh:
        fh.write(data)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where the file system cannot (some network ones)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
