"""File uploads on disk: received off the event loop, split in a worker thread, never left behind.

Why: an upload of hundreds of MB parsed on the event loop (multipart splitting, file writes)
stalls every other request of that process for as long as it takes, so the rig's image and
manifest GETs wait behind it. Here the event loop only receives the body's chunks; writing them
(in 1 MiB batches) and splitting the multipart parts into one file per field happen in the thread
pool, with ``python-multipart``'s streaming parser, so no part is ever held in memory whole.

The CPU-heavy part (splitting the parts, then parsing, validating and storing the files) runs in
a small pool of its own, :func:`run_bulk`, not in the shared thread pool that the rig's image and
manifest GETs hop through: a burst of uploads can never take the threads those reads wait for. At
most ``BULK_THREADS`` uploads are parsed at once per server process; more wait their turn, which
also bounds the memory that parsing takes.

Every upload gets its own temporary folder named after the server process
(``itloop-upload-<pid>-*``), removed when the request ends however it ends (success, error, a
client that went away, cancellation). A process killed mid-upload (``kill -9``, out of memory)
cannot clean up, so :func:`sweep_stale_uploads` runs at every server start and removes the folders
of processes that are gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, TypeVar

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from itloop.errors import InvalidUpload

log = logging.getLogger(__name__)

PREFIX = "itloop-upload-"
WRITE_BATCH_BYTES = 1 << 20
READ_CHUNK_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024  # non-file form fields are ignored, but bounded while they stream past
ORPHAN_AGE_S = 24 * 3600  # folders that name no process (older layouts) are removed after a day
BULK_THREADS = 2

T = TypeVar("T")
_bulk: ThreadPoolExecutor | None = None
_bulk_lock = threading.Lock()


def _bulk_executor() -> ThreadPoolExecutor:
    global _bulk
    with _bulk_lock:
        if _bulk is None:
            _bulk = ThreadPoolExecutor(BULK_THREADS, thread_name_prefix="itloop-bulk")
        return _bulk


async def run_bulk(fn: Callable[..., T], *args: object) -> T:
    """Run blocking, CPU-heavy ``fn(*args)`` in the bulk pool and wait for it.

    Shielded like Starlette's ``run_in_threadpool``: a request cancelled meanwhile (client gone)
    still waits for the work to end, so nothing it uses (its database session) is closed under it.
    """
    loop = asyncio.get_running_loop()
    with anyio.CancelScope(shield=True):
        result = await loop.run_in_executor(_bulk_executor(), functools.partial(fn, *args))
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_uploads(root: Path | None = None) -> int:
    """Remove upload folders whose server process is gone; returns how many were removed.

    Safe while other server processes serve: a folder of a live process is kept.
    """
    root = Path(root or tempfile.gettempdir())
    removed = 0
    for folder in root.glob(PREFIX + "*"):
        if not folder.is_dir():
            continue
        pid_text = folder.name[len(PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit():
            stale = int(pid_text) != os.getpid() and not _alive(int(pid_text))
        else:
            try:
                stale = time.time() - folder.stat().st_mtime > ORPHAN_AGE_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.warning("removed %d upload folder(s) left by server processes that were killed", removed)
    return removed


@asynccontextmanager
async def upload_folder() -> AsyncIterator[Path]:
    """A private temporary folder for one upload, removed (in a worker thread) on any exit."""
    folder = Path(await run_in_threadpool(tempfile.mkdtemp, prefix=f"{PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        # Shielded: a cancelled request (client gone) still removes its folder.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(shutil.rmtree, folder, True)


async def receive_body(request: Request, target: Path) -> int:
    """Stream the request body into ``target``; the writes happen in the thread pool.

    Size bounds are the app's (``server.body_limit``), applied to the chunks as they arrive.
    """
    written = 0
    pending = bytearray()
    fh: IO[bytes] = await run_in_threadpool(open, target, "wb")
    try:
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= WRITE_BATCH_BYTES:
                batch, pending = bytes(pending), bytearray()
                await run_in_threadpool(fh.write, batch)
                written += len(batch)
        if pending:
            await run_in_threadpool(fh.write, bytes(pending))
            written += len(pending)
    finally:
        await run_in_threadpool(fh.close)
    return written


class _PartWriter:
    """``python-multipart`` callbacks that write each accepted file part to its own file."""

    def __init__(self, folder: Path, fields: tuple[str, ...]) -> None:
        self.folder = folder
        self.fields = fields
        self.files: dict[str, Path] = {}
        self.out: IO[bytes] | None = None
        self.name = ""
        self.header = b""
        self.value = b""
        self.disposition = b""
        self.field_bytes = 0

    def on_part_begin(self) -> None:
        self.disposition, self.out, self.name, self.field_bytes = b"", None, "", 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = self.value
        self.header, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise InvalidUpload("malformed multipart body: a part has no field name")
        name = raw_name.decode("utf-8", errors="replace")
        if b"filename" not in options:
            return  # a plain form field: ignored
        if name not in self.fields:
            raise InvalidUpload(
                f"unexpected multipart field {name[:60]!r}; expected {', '.join(self.fields)}"
            )
        if name in self.files:
            raise InvalidUpload(f"multipart field {name!r} appears twice; send each file once")
        self.files[name] = self.folder / name
        self.name, self.out = name, open(self.files[name], "wb")  # closed at the part's end

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.out is not None:
            self.out.write(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > MAX_FIELD_BYTES:
            raise InvalidUpload(f"a non-file multipart field is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None

    def abandon_open_part(self) -> None:
        """The body ended inside a part: close it and forget it (what it wrote is incomplete)."""
        if self.out is not None:
            self.out.close()
            self.out = None
            self.files.pop(self.name, None)


def split_multipart(body: Path, content_type: str, folder: Path, fields: tuple[str, ...]) -> dict[str, Path]:
    """Write each file part of a multipart body to ``folder/<field name>`` (blocking; run in a thread).

    Only the field names in ``fields`` are accepted, each once, so what a client names a part never
    becomes a path of its own. Non-file fields are read past and ignored.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidUpload("malformed multipart body: the Content-Type names no boundary")
    writer = _PartWriter(folder, fields)
    callbacks = {
        name: getattr(writer, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        with open(body, "rb") as fh:
            while chunk := fh.read(READ_CHUNK_BYTES):
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidUpload(f"malformed multipart body: {exc}") from None
    finally:
        writer.abandon_open_part()
    return writer.files


async def receive_files(request: Request, folder: Path, fields: tuple[str, ...]) -> dict[str, Path]:
    """The multipart upload's files, one per field, on disk in ``folder``; the body file is removed."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidUpload("expected a multipart/form-data upload")
    body = folder / ".body"
    await receive_body(request, body)
    try:
        return await run_bulk(split_multipart, body, request.headers["content-type"], folder, fields)
    finally:
        await run_in_threadpool(body.unlink, True)


def scrub_paths(text: str, folder: Path) -> str:
    """``text`` without the server's temporary folder in it (error messages name files by their field)."""
    for form in {str(folder), str(folder.resolve())}:
        text = text.replace(form + os.sep, "").replace(form, "upload")
    return text
