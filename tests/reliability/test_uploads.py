"""Uploads are bounded, and what clients put in paths and file names never reaches the file system.

(c) ``max_upload_bytes`` gives 413 with a JSON detail for spike and image-set uploads;
(d) traversal, url-encoded traversal, very long ids and NUL bytes in path parameters and in
multipart file names are 4xx JSON (never 500), and nothing outside the store is read or written.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from server.images.tables import Image, ImageSet
from tests.server.test_recordings_helpers import (
    create_session,
    make_lab,
    row_counts,
    synth,
    upload,
    write_csv,
)

API = "/api/v1"


def _png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: a before/after picture of the disk."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _json_4xx(r) -> None:  # type: ignore[no-untyped-def]
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    assert isinstance(r.json().get("detail"), str) and r.json()["detail"]


# -- (c) size bounds -----------------------------------------------------------------------------


def test_spike_upload_over_the_limit_is_413(client, auth, db_session: Session, settings: Settings, tmp_path):  # type: ignore[no-untyped-def]
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    files = write_csv(tmp_path, synth(lab, seed=5))
    settings.max_upload_bytes = 2048
    before = row_counts(db_session)
    r = upload(client, auth, lab.sid, files)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/json") and "2048" in r.json()["detail"]
    # Without a Content-Length the streamed count still stops it.
    body = b"--b\r\n" + b"x" * 10_000
    r = client.post(
        f"{API}/sessions/{lab.sid}/spikes",
        content=iter([body]),
        headers={**auth("experimenter"), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and "2048" in r.json()["detail"], r.text
    assert row_counts(db_session) == before


def test_image_set_upload_over_the_limit_is_413(client, auth, db_session: Session, settings: Settings):  # type: ignore[no-untyped-def]
    settings.max_upload_bytes = 1500
    files = [("files", (f"{i}.png", _png(i, 16), "image/png")) for i in range(4)]
    assert sum(len(f[1][1]) for f in files) > 1500
    n_images = db_session.scalar(select(func.count()).select_from(Image))
    name = f"big-{uuid.uuid4().hex[:6]}"
    r = client.post(f"{API}/image-sets", data={"name": name}, files=files, headers=auth("experimenter"))
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/json") and "1500" in r.json()["detail"]
    assert db_session.scalar(select(func.count()).select_from(Image)) == n_images
    assert db_session.scalar(select(ImageSet.id).where(ImageSet.name == name)) is None


# -- (d) client-chosen paths ---------------------------------------------------------------------

TRAVERSALS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "....//....//etc/passwd",
    "%2Fetc%2Fpasswd",
    "a%00b",
    "%00",
    "x" * 5000,
    "a" * 64 + "%00.png",
    "0" * 63 + "/",
]
ROUTES = [
    ("GET", "/images/{}", "rig"),
    ("GET", "/images/{}/lineage", "viewer"),
    ("GET", "/image-sets/{}", "viewer"),
    ("GET", "/batches/{}", "rig"),
    ("GET", "/batches/{}/bundle", "rig"),
    ("GET", "/rigs/{}/batches/next", "rig"),
    ("GET", "/sessions/{}", "viewer"),
    ("GET", "/sessions/{}/export.nwb", "viewer"),
    ("GET", "/sessions/{}/responses.nc", "viewer"),
    ("GET", "/model-versions/{}", "viewer"),
    ("GET", "/model-versions/sites/{}/history", "viewer"),
    ("GET", "/sites/{}", "viewer"),
    ("GET", "/subjects/{}", "viewer"),
    ("POST", "/batches/{}/complete", "rig"),
    ("POST", "/sessions/{}/complete", "experimenter"),
    ("DELETE", "/tokens/{}", "admin"),
]


def test_path_parameters_never_reach_the_file_system(client, auth, settings: Settings) -> None:
    """Every traversal string on every route that takes an id: 4xx JSON, store untouched."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "store" / "images").mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "secret.txt").write_text("root:x:0:0:SECRET-OUTSIDE-THE-STORE")
    before = _tree(settings.data_dir)
    failures = []
    for method, route, role in ROUTES:
        for value in TRAVERSALS:
            url = API + route.format(value)
            r = client.request(method, url, headers=auth(role))
            json_type = r.headers.get("content-type", "").startswith("application/json")
            ok = 400 <= r.status_code < 500 and json_type
            if route == "/tokens/{}":  # revoking by an unknown prefix is a harmless no-op
                ok = ok or (r.status_code == 200 and r.json() == {"revoked": 0})
            if not ok or "root:" in r.text or "SECRET-OUTSIDE" in r.text:
                failures.append(f"{method} {url[:90]}: {r.status_code} {r.text[:150]}")
    assert not failures, "\n".join(failures)
    assert _tree(settings.data_dir) == before


FILE_NAMES = [
    "../../../evil.png",
    "..\\..\\evil.png",
    "/tmp/evil-abs.png",
    "a\x00b.png",
    "%2e%2e%2fevil.png",
    "e" * 5000,
]


def test_multipart_file_names_never_become_paths(client, auth, settings: Settings) -> None:
    """Image-set member names are data (lineage ``source_name``), never a path to write."""
    root = settings.data_dir.parent
    before = {p for p in root.rglob("*") if "store" not in p.parts}
    for i, filename in enumerate(FILE_NAMES):
        name = f"names-{uuid.uuid4().hex[:6]}"
        files = [("files", (filename, _png(100 + i), "image/png"))]
        r = client.post(f"{API}/image-sets", data={"name": name}, files=files, headers=auth("experimenter"))
        assert r.status_code < 500, (filename[:40], r.text)
        assert r.headers["content-type"].startswith("application/json")
        if r.status_code >= 400:
            _json_4xx(r)
    store = settings.data_dir / "store"
    written = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert all(p.parent.parent.name == "images" and p.suffix == ".png" for p in written), written
    assert {p for p in root.rglob("*") if "store" not in p.parts} == before
    assert not Path("/tmp/evil-abs.png").exists() and not (root.parent / "evil.png").exists()


def test_spike_upload_field_and_file_names_never_become_paths(
    client, auth, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    files = write_csv(tmp_path / "csv", synth(lab, seed=9))
    before = row_counts(db_session)
    for field in ("../../evil", "file\x00x", "/tmp/evil-field"):
        handles = {
            field: ("../../../evil.csv", files["spikes"].read_bytes()),
            "presentations": ("/tmp/evil-abs.csv", files["presentations"].read_bytes()),
        }
        r = client.post(f"{API}/sessions/{lab.sid}/spikes", files=handles, headers=auth("experimenter"))
        _json_4xx(r)
    assert row_counts(db_session) == before
    assert not Path("/tmp/evil-abs.csv").exists() and not Path("/tmp/evil-field").exists()
    assert not any(tmp_path.parent.rglob("evil*"))
