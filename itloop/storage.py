"""One object-store interface for images, model artifacts and feature caches.

A local folder by default (``file://`` or a bare path) and any fsspec filesystem in
deployment (``s3://bucket/prefix`` through s3fs, MinIO included). Keys are relative,
slash-separated paths. Writes are atomic, so a crashed worker never leaves a
half-written object that a rig could fetch:

- local folder: the bytes go to a hidden ``.tmp-*.part`` file in the target folder,
  are fsynced, and renamed into place (``os.replace`` is atomic on POSIX); temporary
  files are never listed and :meth:`LocalStore.sweep_temp` removes those left by
  killed writers;
- S3 (and GCS, Azure, memory): a PUT, or a multipart upload, only becomes visible
  when it completes; an interrupted multipart upload stays invisible (expire it with
  a bucket lifecycle rule, see ``docs/deployment.md``);
- other fsspec filesystems (sftp, ...): write a temporary key, then move it.

Configuration for S3/MinIO comes from the environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``FSSPEC_S3_ENDPOINT_URL`` (read by fsspec itself when it is
imported) and, for anything else, ``ITLOOP_STORE_OPTIONS``: a JSON object of fsspec
storage options, e.g. ``{"endpoint_url": "http://minio:9000", "key": "...", "secret": "..."}``.

Errors: a missing object is ``KeyError``; an invalid key is ``ValueError``; anything
else the backend raises (no permission, no bucket, full disk, network) is
:class:`StoreError`, whose message names the store and the key.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from itloop.sha256 import is_sha256
from models.files import atomic_write_bytes

TMP_PREFIX = ".tmp-"
STORE_OPTIONS_ENV = "ITLOOP_STORE_OPTIONS"
# Backends whose single write is all-or-nothing from a reader's point of view.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})


class StoreError(Exception):
    """The store could not read or write an object (full disk, no permission, no bucket)."""


def _check_key(key: str) -> str:
    """Keys come from our own code, but never let one climb out of the store or hit a temp name."""
    if not isinstance(key, str) or not key or "\\" in key or "\x00" in key or key.endswith("/"):
        raise ValueError(f"invalid object key {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.name.startswith(TMP_PREFIX):
        raise ValueError(f"invalid object key {key!r}")
    return str(path)


def _check_prefix(prefix: str) -> str:
    """A listing prefix is a folder of keys ("" for all); same safety rules as a key."""
    prefix = prefix.rstrip("/") if prefix not in ("", "/") else ""
    return _check_key(prefix) if prefix else ""


def image_key(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"images/{sha256[:2]}/{sha256}.png"


class ObjectStore(Protocol):
    """What every store offers; ``local_path`` is a fast path only a local folder has."""

    url: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def local_path(self, key: str) -> Path | None: ...


class LocalStore:
    """A folder on a local or network file system; writes are temp-file-then-rename."""

    def __init__(self, root: Path | str, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.url = self.root.resolve().as_uri()
        self.durable = durable  # fsync file and folder: a committed row never outlives its object

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            atomic_write_bytes(path, data, durable=self.durable, prefix=TMP_PREFIX)
        except OSError as exc:
            raise StoreError(
                f"cannot write {key} to the object store at {self.root}: {exc.strerror or exc}"
            ) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.root}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except OSError as exc:
            raise StoreError(f"cannot check {key} in {self.root}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except IsADirectoryError:
            pass  # a folder is not an object: nothing to delete
        except OSError as exc:
            raise StoreError(f"cannot delete {key} from {self.root}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the folder ``prefix`` (all keys for ""), sorted; temporary files never appear."""
        prefix = _check_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        try:
            if base.is_file():
                return [prefix]
            if not base.is_dir():
                return []
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(TMP_PREFIX)
            )
        except OSError as exc:
            raise StoreError(f"cannot list {prefix or '/'} in {self.root}: {exc.strerror or exc}") from exc

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def sweep_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by killed writers; returns how many. Young ones may be live."""
        cutoff = time.time() - older_than_s
        removed = 0
        if not self.root.is_dir():
            return 0
        for p in self.root.rglob(f"{TMP_PREFIX}*"):
            try:
                if p.is_file() and p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # its writer finished (renamed it) or another sweeper got it
        return removed


class FsspecStore:
    """Any fsspec filesystem (s3://, gs://, memory://): objects appear only when fully written.

    ``storage_options`` go to the filesystem (for s3fs: ``endpoint_url``, ``key``,
    ``secret``, ``client_kwargs``...). ``part_size`` is the multipart chunk of S3
    uploads: objects of at least two parts are sent as a multipart upload, which S3
    makes visible only on completion, like a single PUT.
    """

    def __init__(self, url: str, *, part_size: int = 50 * 2**20, **storage_options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.part_size = int(part_size)
        try:
            self.fs, base = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the object store {self.url}: {exc}") from exc
        self.base = base.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.protocol = str(protocols[0])
        self.atomic_put = bool(ATOMIC_PUT_PROTOCOLS.intersection(protocols))
        self._root_ok = False

    def _check_root(self) -> None:
        """On the first miss, make sure the bucket exists: a misconfigured store is an error, not a 404."""
        if self._root_ok or self.protocol not in ("s3", "s3a", "gs", "gcs"):
            return
        bucket = self.base.split("/", 1)[0]
        try:
            self.fs.invalidate_cache(bucket)
            found = bool(self.fs.exists(bucket))
        except Exception as exc:
            raise StoreError(f"cannot reach the bucket of {self.url}: {type(exc).__name__}: {exc}") from exc
        if not found:
            raise StoreError(
                f"the object store {self.url} is misconfigured: bucket {bucket!r} does not exist"
            )
        self._root_ok = True

    def _path(self, key: str) -> str:
        return f"{self.base}/{_check_key(key)}"

    def _error(self, verb: str, key: str, exc: BaseException) -> StoreError:
        return StoreError(f"cannot {verb} {key} in {self.url}: {type(exc).__name__}: {exc}")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            if self.atomic_put:
                kwargs = {"chunksize": self.part_size} if self.protocol in ("s3", "s3a") else {}
                self.fs.pipe_file(path, bytes(data), **kwargs)
            else:
                tmp = f"{path.rsplit('/', 1)[0]}/{TMP_PREFIX}{uuid.uuid4().hex}.part"
                try:
                    self.fs.pipe_file(tmp, bytes(data))
                    self.fs.mv(tmp, path)
                finally:
                    if self.fs.exists(tmp):
                        self.fs.rm_file(tmp)
        except TypeError:
            raise
        except Exception as exc:  # backends raise many types
            raise self._error("write", key, exc) from exc
        finally:
            self.fs.invalidate_cache(path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return bytes(self.fs.cat_file(path))
        except (FileNotFoundError, IsADirectoryError):
            self._check_root()
            raise KeyError(key) from None
        except Exception as exc:
            raise self._error("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        """True for an object, False for a missing key or a mere prefix (S3 has no folders)."""
        path = self._path(key)
        try:
            self.fs.invalidate_cache(path)  # another process may have written it since we listed
            found = bool(self.fs.isfile(path))
        except FileNotFoundError:
            found = False
        except Exception as exc:
            raise self._error("check", key, exc) from exc
        if not found:
            self._check_root()
        return found

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._error("delete", key, exc) from exc
        finally:
            self.fs.invalidate_cache(path)

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the folder ``prefix`` (all keys for ""), sorted; temporary keys never appear."""
        prefix = _check_prefix(prefix)
        root = f"{self.base}/{prefix}" if prefix else self.base
        try:
            self.fs.invalidate_cache(root)
            found = self.fs.find(root)
        except FileNotFoundError:
            found = []
        except Exception as exc:
            raise self._error("list", prefix or "/", exc) from exc
        if not found:
            self._check_root()
        cut = len(self.base) + 1
        return sorted(p[cut:] for p in found if not p.rsplit("/", 1)[-1].startswith(TMP_PREFIX))

    def local_path(self, key: str) -> Path | None:
        return None


def store_options_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """fsspec storage options from ``ITLOOP_STORE_OPTIONS`` (a JSON object), or {}."""
    raw = (environ if environ is not None else os.environ).get(STORE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{STORE_OPTIONS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise StoreError(f"{STORE_OPTIONS_ENV} must be a JSON object, not {type(options).__name__}")
    return options


def open_store(url: str, **storage_options: Any) -> ObjectStore:
    """Open the store a URL names: ``file:///path``, a bare path, or any fsspec URL.

    Without explicit ``storage_options`` an fsspec store takes them from
    ``ITLOOP_STORE_OPTIONS``; fsspec adds its own ``FSSPEC_<PROTOCOL>_<OPTION>`` variables.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url))
    options = storage_options or store_options_from_env()
    return FsspecStore(url, **options)


@lru_cache(maxsize=8)
def get_store(url: str | None = None) -> ObjectStore:
    """The process's store for ``url`` (default: the settings' store URL), opened once."""
    from itloop.settings import get_settings

    return open_store(url or get_settings().resolved_store_url)
