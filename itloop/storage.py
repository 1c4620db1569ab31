"""One object-store interface for images, model artifacts and feature caches.

A local folder by default (``file://``) and any fsspec filesystem in deployment
(``s3://bucket/prefix`` through s3fs, MinIO included). Keys are relative,
slash-separated paths. Writes are atomic: a local write goes to a temporary file
that is renamed into place; an S3 PUT only becomes visible when complete. So a
crashed worker never leaves a half-written object that a rig could fetch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname


class StoreError(Exception):
    """The store could not read or write an object (full disk, no permission, no bucket)."""


def _check_key(key: str) -> str:
    """Keys come from our own code, but never let one climb out of the store."""
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not key or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    return str(path)


def image_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"images/{sha256[:2]}/{sha256}.png"


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def local_path(self, key: str) -> Path | None: ...


class LocalStore:
    """A folder on a local or network file system."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.url = self.root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(
                f"cannot write {key} to the object store at {self.root}: {exc.strerror or exc}"
            ) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.root}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root).as_posix())
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class FsspecStore:
    """Any fsspec filesystem (s3://, gs://, memory://); S3 objects appear only when fully uploaded."""

    def __init__(self, url: str, **storage_options: object) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **storage_options)
        self.base = self.base.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.base}/{_check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data)
        except Exception as exc:  # noqa: BLE001 - backends raise many types
            raise StoreError(f"cannot write {key} to {self.url}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.base}/{prefix}".rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        return sorted(p[len(self.base) + 1 :] for p in found)

    def local_path(self, key: str) -> Path | None:
        return None


def open_store(url: str) -> ObjectStore:
    """Open the store a URL names: ``file:///path``, a bare path, or any fsspec URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(url2pathname(parsed.path)) if parsed.scheme else Path(url))
    return FsspecStore(url)


@lru_cache(maxsize=8)
def get_store(url: str | None = None) -> ObjectStore:
    from itloop.settings import get_settings

    return open_store(url or get_settings().resolved_store_url)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
