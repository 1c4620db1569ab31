"""`itloop backup` / `itloop restore` as users run them, with the API writing during the backup.

On each backend: the embedded default (SQLite: the online backup API) and PostgreSQL (pg_dump of
one exported snapshot, pg_restore). The restore must reproduce the backup's row counts exactly
and every image's bytes, and everything committed before the backup started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import create_engine, select

from demo.server import BackgroundServer
from itloop.backup import table_counts
from itloop.storage import open_store
from server.auth import service as auth_service
from server.db.engine import session_scope
from server.db.provision import create_pg_database, drop_pg_database
from server.images.tables import Image, ImageSet
from tests.conftest import make_settings

V1 = "/api/v1"


def _itloop(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "itloop.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _env(data_dir: Path, database_url: str | None, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["ITLOOP_DATA_DIR"] = str(data_dir)
    env["ITLOOP_STORE_URL"] = store.resolve().as_uri()
    if database_url:
        env["ITLOOP_DATABASE_URL"] = database_url
    return env


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Uploader:
    """Uploads image sets through the API until stopped; remembers when each one was answered."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base + V1, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.done: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = np.random.default_rng(7)

    def _run(self) -> None:
        while not self._stop.is_set():
            name = f"set-{uuid.uuid4().hex[:10]}"
            files = [("files", (f"{i}.png", _png(self._rng), "image/png")) for i in range(3)]
            r = self.http.post("/image-sets", data={"name": name}, files=files)
            if r.status_code == 201:
                self.done.append((time.monotonic(), name))
            else:
                self.errors.append(f"{r.status_code} {r.text[:200]}")

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.done) < n:
            assert time.monotonic() < deadline and not self.errors, self.errors
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.http.close()


@pytest.fixture
def target(backend: str, tmp_path: Path) -> Iterator[tuple[str | None, Callable[[], str]]]:
    """An empty, unmigrated target database: (URL or None for the embedded default, its URL)."""
    if backend == "sqlite":
        yield None, lambda: f"sqlite:///{(tmp_path / 'dst' / 'itloop.db').resolve()}"
        return
    name = f"itloop_restore_{uuid.uuid4().hex[:10]}"
    url = create_pg_database(name)
    try:
        yield url, lambda: url
    finally:
        drop_pg_database(name)


def test_backup_while_serving_restores_exactly(
    backend: str, fresh_db_url: str, tmp_path: Path, target: tuple[str | None, Callable[[], str]]
) -> None:
    if backend == "postgresql" and shutil.which("pg_dump") is None:
        pytest.skip("pg_dump/pg_restore (PostgreSQL client tools) are not installed")
    src_store, dst_store = tmp_path / "src" / "store", tmp_path / "dst" / "store"
    settings = make_settings(fresh_db_url, tmp_path / "src")  # its store: <data_dir>/store
    with session_scope(fresh_db_url) as db:
        user = auth_service.create_user(session=db, name="ana", role="experimenter")
        token = auth_service.create_token(session=db, user=user)
    src_env = _env(tmp_path / "src", fresh_db_url, src_store)
    dst_url, dst_database = target
    dst_env = _env(tmp_path / "dst", dst_url, dst_store)
    backup = tmp_path / "backup"

    with BackgroundServer(settings) as server:
        uploader = Uploader(server.url, token).start()
        try:
            uploader.wait_for(3)
            started = time.monotonic()
            before = {name for t, name in uploader.done if t < started}
            r = _itloop(["backup", str(backup)], src_env)
            finished = time.monotonic()
            assert r.returncode == 0, r.stderr
            uploader.wait_for(len(uploader.done) + 2)  # the API kept writing after the backup, too
        finally:
            uploader.stop()
    assert not uploader.errors, uploader.errors
    assert any(started < t < finished for t, _ in uploader.done), (
        "no upload finished during the backup: the test did not test a backup while writing"
    )
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["database"] == backend and manifest["revision"]

    # Into an empty target.
    r = _itloop(["restore", str(backup)], dst_env)
    assert r.returncode == 0, r.stderr
    assert "counts match" in r.stdout
    restored = table_counts(dst_database())
    assert {n: restored[n] for n in manifest["counts"]} == manifest["counts"]
    engine = create_engine(dst_database())
    with engine.connect() as conn:
        names = set(conn.scalars(select(ImageSet.name)))
        images = conn.execute(select(Image.sha256, Image.n_bytes)).all()
    engine.dispose()
    assert before <= names  # everything committed before the backup started
    assert len(names) < len({name for _, name in uploader.done})  # and not what came after it
    store = open_store(dst_store.resolve().as_uri())
    assert images and len(images) == manifest["counts"]["images"]
    for sha, n_bytes in images:
        data = store.get(f"images/{sha[:2]}/{sha}.png")
        assert hashlib.sha256(data).hexdigest() == sha and len(data) == n_bytes
        assert data == (src_store / "images" / sha[:2] / f"{sha}.png").read_bytes()

    # A target with data is refused unless forced; a backup never writes into a used folder.
    again = _itloop(["restore", str(backup)], dst_env)
    assert again.returncode == 1 and "not empty" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    forced = _itloop(["restore", str(backup), "--force"], dst_env)
    assert forced.returncode == 0, forced.stderr
    assert table_counts(dst_database())["images"] == manifest["counts"]["images"]
    used = _itloop(["backup", str(backup)], src_env)
    assert used.returncode == 1 and "not an empty folder" in used.stderr
    bad = _itloop(["restore", str(tmp_path)], dst_env)
    assert bad.returncode == 1 and "not an itloop backup" in bad.stderr
