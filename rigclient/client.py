"""A small typed client for the itloop rig API: pull the batch, cache images by hash, post events.

Only ``httpx`` is needed on the rig machine. Every image is verified against its SHA-256
before it is used, so what the rig shows is exactly what the manifest names. Posting
events retries on connection errors and 5xx with exponential backoff; that is safe
because the server is idempotent by ``event_id``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from rigclient.models import FetchResult, Manifest, PresentationEvent

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
RETRY_STATUS = {500, 502, 503, 504}
T = TypeVar("T")


class RigClientError(Exception):
    """The server refused a request (4xx), or retries ran out; ``status`` is the last HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HashMismatch(RigClientError):
    """Downloaded bytes do not hash to the SHA-256 the manifest names."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RigClient:
    """Client for one rig.

    Parameters
    ----------
    base_url : str
        Server root, e.g. ``http://itloop.lab:8000`` (``/api/v1`` is added).
    token : str
        The rig's API token (role ``rig``).
    cache_dir : str or Path
        Images are cached here as ``images/<sha256>.png``, shared across batches.
    rig_id : str, optional
        This rig's id, used by :meth:`next_batch` when none is given.
    retries : int
        Attempts after the first on connection errors and 5xx.
    backoff_s : float
        First retry delay; doubles each attempt, capped at ``max_backoff_s``.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        cache_dir: str | Path,
        rig_id: str | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.rig_id = rig_id
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "itloop-rigclient/0.2"},
            timeout=timeout_s,
            transport=transport,
        )

    # ---- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(
        self, what: str, call: Callable[[], httpx.Response], retries: int | None = None
    ) -> httpx.Response:
        """Run ``call`` until it gives a non-5xx answer, sleeping with exponential backoff."""
        retries = self.retries if retries is None else retries
        delay = self.backoff_s
        last: str = ""
        status: int | None = None
        for attempt in range(retries + 1):
            try:
                response = call()
            except httpx.TransportError as exc:
                last, status = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                last, status = f"HTTP {response.status_code}: {response.text[:200]}", response.status_code
            if attempt < retries:
                log.warning("%s failed (%s); retrying in %.1f s", what, last, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise RigClientError(f"{what} failed after {retries + 1} attempts: {last}", status)

    def _request(self, method: str, path: str, retries: int | None = None, **kwargs: Any) -> httpx.Response:
        # Manifest URLs are absolute or already carry the prefix; our own paths do not.
        url = path if path.startswith(("http://", "https://", API_PREFIX)) else API_PREFIX + path
        response = self._retrying(
            f"{method} {url}", lambda: self._http.request(method, url, **kwargs), retries=retries
        )
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (json.JSONDecodeError, AttributeError):
                detail = response.text
            raise RigClientError(
                f"{method} {url}: HTTP {response.status_code}: {detail}", response.status_code
            )
        return response

    # ---- batches ------------------------------------------------------------------------------

    def next_batch(self, rig_id: str | None = None) -> Manifest | None:
        """The newest published batch this rig has not completed, or None when there is none."""
        rig = rig_id or self.rig_id
        if not rig:
            raise ValueError("give rig_id here or to RigClient(...)")
        response = self._request("GET", f"/rigs/{rig}/batches/next")
        if response.status_code == 204:
            return None
        return Manifest.from_dict(response.json())

    def get_manifest(self, batch_id: str) -> Manifest:
        return Manifest.from_dict(self._request("GET", f"/batches/{batch_id}").json())

    def complete(self, batch_id: str) -> dict[str, Any]:
        """Tell the server the rig finished the batch (idempotent)."""
        return dict(self._request("POST", f"/batches/{batch_id}/complete").json())

    # ---- images -------------------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        return self.cache_dir / "images" / f"{sha256}.png"

    def _cached_ok(self, sha256: str) -> bool:
        path = self.image_path(sha256)
        if not path.is_file():
            return False
        if _sha256(path.read_bytes()) == sha256:
            return True
        log.warning("cached image %s is corrupt; downloading it again", sha256)
        path.unlink(missing_ok=True)
        return False

    def _download(self, sha256: str, url: str) -> bytes:
        for attempt in (1, 2):
            data = self._request("GET", url).content
            if _sha256(data) == sha256:
                return data
            log.warning("image %s: downloaded bytes hash to %s (attempt %d)", sha256, _sha256(data), attempt)
        raise HashMismatch(f"image {sha256}: the server sent bytes with another SHA-256; not using them")

    def fetch_images(self, manifest: Manifest) -> FetchResult:
        """Make every image of ``manifest`` available locally, verified; cached ones are not fetched."""
        result = FetchResult(paths={})
        for image in manifest.images:
            path = self.image_path(image.sha256)
            if self._cached_ok(image.sha256):
                result.cached.append(image.sha256)
            else:
                _atomic_write(path, self._download(image.sha256, image.url))
                result.downloaded.append(image.sha256)
            result.paths[image.sha256] = path
        return result

    def fetch_bundle(self, batch_id: str | None = None) -> Manifest | None:
        """Download a batch as one zip, verify every image, and fill the cache from it.

        With no ``batch_id``, fetches this rig's next batch (None when there is none).
        """
        if batch_id is None:
            nxt = self.next_batch()
            if nxt is None:
                return None
            batch_id = nxt.batch_id
        response = self._request("GET", f"/batches/{batch_id}/bundle")
        zpath = self.cache_dir / "bundles" / f"{batch_id}.zip"
        _atomic_write(zpath, response.content)
        with zipfile.ZipFile(zpath) as zf:
            manifest = Manifest.from_dict(json.loads(zf.read("manifest.json")))
            for image in manifest.images:
                if self._cached_ok(image.sha256):
                    continue
                data = zf.read(f"images/{image.sha256}.png")
                if _sha256(data) != image.sha256:
                    raise HashMismatch(f"bundle {batch_id}: image {image.sha256} does not match its hash")
                _atomic_write(self.image_path(image.sha256), data)
            calibration = (manifest.extra.get("display") or {}).get("calibration")
            if calibration:
                data = zf.read(calibration["path"])
                if _sha256(data) != calibration["sha256"]:
                    raise HashMismatch(f"bundle {batch_id}: the calibration pattern does not match its hash")
                _atomic_write(self.cache_dir / "calibration" / f"{calibration['sha256']}.png", data)
        return manifest

    def calibration_path(self, manifest: Manifest) -> Path | None:
        """The verified calibration pattern of a fetched bundle (None for manifests without one)."""
        calibration = (manifest.extra.get("display") or {}).get("calibration")
        if not calibration:
            return None
        path = self.cache_dir / "calibration" / f"{calibration['sha256']}.png"
        if not path.is_file() or _sha256(path.read_bytes()) != calibration["sha256"]:
            raise RigClientError("the calibration pattern is not in the cache; call fetch_bundle() first")
        return path

    # ---- events -------------------------------------------------------------------------------

    def post_events(
        self,
        batch_id: str,
        events: Iterable[PresentationEvent | Mapping[str, Any]],
        ndjson: bool = False,
        chunk_size: int = 2000,
        retries: int | None = None,
    ) -> dict[str, int]:
        """Post presentation events in chunks; returns summed ``{"received", "new", "repeated"}``.

        Safe to call again with the same events (after a crash, or a lost answer): the
        server stores each ``event_id`` once and counts the rest as repeated. ``retries``
        overrides the client's own for this call (the background poster retries by itself).
        """
        items = [e.to_dict() if isinstance(e, PresentationEvent) else dict(e) for e in events]
        totals = {"received": 0, "new": 0, "repeated": 0}
        for start in range(0, len(items), chunk_size):
            chunk = items[start : start + chunk_size]
            if ndjson:
                body = "".join(json.dumps(e) + "\n" for e in chunk).encode()
                kwargs: dict[str, Any] = {
                    "content": body,
                    "headers": {"Content-Type": "application/x-ndjson"},
                }
            else:
                kwargs = {"json": chunk}
            answer = self._request(
                "POST", f"/batches/{batch_id}/presentations", retries=retries, **kwargs
            ).json()
            for key in totals:
                totals[key] += int(answer[key])
        return totals
