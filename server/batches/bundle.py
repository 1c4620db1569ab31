"""A batch as one zip (``manifest.json`` + ``images/<sha256>.png`` + ``calibration/pattern.png``).

For rigs that prefer one download; the calibration pattern is ``server.batches.display``'s.

The zip is deterministic (fixed timestamps and order, images stored uncompressed since PNG
already is), so the same manifest always gives the same bytes. Bundles are cached in the
object store under a key derived from the manifest's hash, built once per manifest.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from itloop.storage import ObjectStore, image_key
from server.batches.display import pattern_bytes
from server.errors import NotFound

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Canonical JSON of a manifest (sorted keys, no spaces), as the bundle carries it."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def bundle_key(manifest: dict[str, Any]) -> str:
    digest = hashlib.sha256(manifest_bytes(manifest)).hexdigest()[:16]
    return f"bundles/{manifest['batch_id']}-{digest}.zip"


def _info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def write_bundle(manifest: dict[str, Any], store: ObjectStore, dest: Path) -> None:
    """Write the bundle zip for ``manifest`` to ``dest``, reading images from ``store``."""
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr(_info("manifest.json", zipfile.ZIP_DEFLATED), manifest_bytes(manifest))
        for sha in sorted({img["sha256"] for img in manifest["images"]}):
            try:
                data = store.get(image_key(sha))
            except KeyError:
                raise NotFound(
                    f"image {sha} of batch {manifest['batch_id']!r} is missing from the store"
                ) from None
            zf.writestr(_info(f"images/{sha}.png", zipfile.ZIP_STORED), data)
        calibration = (manifest.get("display") or {}).get("calibration")
        if calibration:  # manifests published before the display block have none
            zf.writestr(_info(calibration["path"], zipfile.ZIP_STORED), pattern_bytes())


def ensure_bundle(manifest: dict[str, Any], store: ObjectStore) -> str:
    """Build the bundle into the store unless it is there already; returns its key."""
    key = bundle_key(manifest)
    if store.exists(key):
        return key
    with tempfile.TemporaryDirectory(prefix="itloop-bundle-") as tmp:
        path = Path(tmp) / "bundle.zip"
        write_bundle(manifest, store, path)
        store.put(key, path.read_bytes())
    return key
