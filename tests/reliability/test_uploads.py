"""Uploads are bounded, and what clients put in paths and file names never reaches the file system.

(c) ``max_upload_bytes`` gives 413 with a JSON detail for spike and image-set uploads, before the
body is parsed: a declared length over the limit is refused unread, a chunked body is stopped as
soon as it passes the limit (``server.body_limit``);
(d) traversal, url-encoded traversal, very long ids and NUL bytes in path parameters and in
multipart file names are 4xx JSON (never 500), and nothing outside the store is read or written.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
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


def _multipart(name: str, files: list[Any]) -> tuple[bytes, str]:
    """A real multipart image-set body and its Content-Type, as httpx encodes a form upload."""
    request = httpx.Request("POST", "http://itloop/", data={"name": name}, files=files)
    return request.read(), request.headers["content-type"]


def _post_streamed(app: Any, url: str, body: bytes, headers: dict[str, str]) -> tuple[httpx.Response, int]:
    """POST ``body`` in 4 KiB chunks from a generator (chunked unless ``headers`` declare a length)
    through httpx's ASGI transport, which hands the app one chunk per read; returns the response
    and how many bytes the app pulled."""
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for start in range(0, len(body), 4096):
            pulled += len(body[start : start + 4096])
            yield body[start : start + 4096]

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://itloop") as http:
            return await http.post(url, content=chunks(), headers=headers)

    return asyncio.run(post()), pulled


def _image_counts(db_session: Session) -> tuple[int | None, int | None]:
    return (
        db_session.scalar(select(func.count()).select_from(Image)),
        db_session.scalar(select(func.count()).select_from(ImageSet)),
    )


def test_image_set_upload_is_bounded_before_it_is_parsed(
    client, auth, db_session: Session, settings: Settings
):  # type: ignore[no-untyped-def]
    limit = settings.max_upload_bytes = 20_000
    name = f"huge-{uuid.uuid4().hex[:6]}"
    files = [("files", (f"{i}.png", _png(200 + i, 48), "image/png")) for i in range(16)]
    body, content_type = _multipart(name, files)
    assert len(body) > 4 * limit
    headers = {**auth("experimenter"), "Content-Type": content_type}
    before = _image_counts(db_session)

    # Declared: refused without reading a byte of the body.
    declared = {**headers, "Content-Length": str(len(body))}
    r, pulled = _post_streamed(client.app, f"{API}/image-sets", body, declared)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert str(len(body)) in r.json()["detail"] and str(limit) in r.json()["detail"]
    assert pulled == 0

    # Chunked, no Content-Length: counted as it streams, stopped as soon as it passes the limit.
    r, pulled = _post_streamed(client.app, f"{API}/image-sets", body, headers)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert str(limit) in r.json()["detail"]
    assert limit < pulled <= limit + 4096 < len(body)

    # The same through the test client: Content-Length set by httpx, then a generator body.
    r = client.post(f"{API}/image-sets", content=body, headers=headers)
    assert r.status_code == 413 and str(limit) in r.json()["detail"], r.text
    r = client.post(f"{API}/image-sets", content=iter([body]), headers=headers)
    assert r.status_code == 413 and str(limit) in r.json()["detail"], r.text

    assert _image_counts(db_session) == before
    assert db_session.scalar(select(ImageSet.id).where(ImageSet.name == name)) is None


def test_bodies_within_the_limit_pass_and_every_body_is_bounded(
    client, auth, db_session: Session, settings: Settings
):  # type: ignore[no-untyped-def]
    limit = settings.max_upload_bytes = settings.max_json_bytes = 20_000
    name = f"small-{uuid.uuid4().hex[:6]}"
    body, content_type = _multipart(name, [("files", ("a.png", _png(300, 16), "image/png"))])
    assert len(body) < limit
    headers = {**auth("experimenter"), "Content-Type": content_type}
    r, pulled = _post_streamed(client.app, f"{API}/image-sets", body, headers)  # chunked, small
    assert r.status_code == 201, r.text
    assert pulled == len(body) and r.json()["n_images"] == 1
    r = client.post(
        f"{API}/subjects", json={"name": f"s-{uuid.uuid4().hex[:6]}"}, headers=auth("experimenter")
    )
    assert r.status_code == 201, r.text
    # A JSON route that reads its body itself is bounded the same way, before it buffers it.
    events = b"[" + b'{"event_id": "e"},' * 2000 + b"{}]"
    r, pulled = _post_streamed(
        client.app,
        f"{API}/batches/no-such-batch/presentations",
        events,
        {**auth("rig"), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and str(limit) in r.json()["detail"], r.text
    assert pulled <= limit + 4096 < len(events)


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
