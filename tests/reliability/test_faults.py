"""Faults: the database connection dies during an ingest; the image store cannot be written.

(1) PostgreSQL only. A large spike upload goes through a live uvicorn server while another thread
terminates every backend of the test database (``pg_terminate_backend``), which is what clients
see when PostgreSQL restarts, without restarting the server that other tests share. The client
gets an error (or a success, if the commit landed first); a retry succeeds; counts are exact and
nothing partial was ever visible.

(2) Both backends. The store root is a path under a regular file, so no object can be written:
an image-set upload answers 503 with a JSON detail naming the image store, and no image row
points to a missing object.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, func, select, text

from demo.server import BackgroundServer
from itloop.sha256 import sha256_hex
from itloop.storage import image_key, open_store
from server.auth import service as auth_service
from server.db.engine import get_engine, session_scope
from server.images.png import decode_png, encode_png
from server.images.tables import Image, ImageSet
from server.recordings.tables import Presentation, RecordingSession, Response, SpikeTrain
from tests.conftest import make_settings, new_database
from tests.server.test_recordings_helpers import make_lab

N_PRES = 3000
N_SPIKES = 1_500_000


def _large_upload(folder: Path, site_ids: list[str], images: list[str]) -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(3)
    onsets = 1.0 + np.arange(N_PRES) * 0.3
    times = np.sort(rng.uniform(0, onsets[-1] + 1, N_SPIKES))
    sites = np.asarray(site_ids)[rng.integers(0, len(site_ids), N_SPIKES)]
    sp, pr = folder / "spikes.parquet", folder / "presentations.parquet"
    pq.write_table(pa.table({"site_id": sites.tolist(), "time_s": times}), sp)
    pq.write_table(
        pa.table(
            {
                "event_id": [f"ev-{i:05d}" for i in range(N_PRES)],
                "image_sha256": [images[i % len(images)] for i in range(N_PRES)],
                "onset_s": onsets,
            }
        ),
        pr,
    )
    return {"spikes": (sp.name, sp.read_bytes()), "presentations": (pr.name, pr.read_bytes())}


def _counts(url: str) -> dict[str, int]:
    with session_scope(url) as db:
        return {
            t.__tablename__: int(db.scalar(select(func.count()).select_from(t)) or 0)
            for t in (Presentation, SpikeTrain, Response)
        }


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database whatever ITLOOP_TEST_BACKENDS says: this fault needs a server."""
    url, cleanup = new_database("postgresql", tmp_path, f"fault_{uuid.uuid4().hex[:8]}")
    yield url
    get_engine(url).dispose()
    cleanup()


def test_database_connections_killed_during_ingest(pg_url: str, tmp_path: Path) -> None:
    """pg_terminate_backend on every connection of the database mid-upload; then retry."""
    fresh_db_url = pg_url
    with session_scope(fresh_db_url) as db:
        lab = make_lab(db, n_sites=16, n_images=20)
        user = auth_service.create_user(session=db, name="exp", role="experimenter")
        token = auth_service.create_token(session=db, user=user)
    headers = {"Authorization": f"Bearer {token}"}
    files = _large_upload(tmp_path, lab.site_ids, lab.images)
    db_name = fresh_db_url.rsplit("/", 1)[-1]
    killer = create_engine(fresh_db_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with BackgroundServer(make_settings(fresh_db_url, tmp_path / "data")) as server:
        url = f"{server.url}/api/v1/sessions/{lab.sid}/spikes"
        body = {"session_id": lab.sid, "subject": lab.subject, "day": 1}
        assert httpx.post(f"{server.url}/api/v1/sessions", json=body, headers=headers).status_code == 201
        outcome: dict[str, object] = {}

        def _post() -> None:
            try:
                outcome["response"] = httpx.post(url, files=files, headers=headers, timeout=120)
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=_post)
        thread.start()
        killed = 0
        deadline = time.monotonic() + 60
        with killer.connect() as conn:
            # Wait until the ingest is writing (a COPY or INSERT on this database), then kill.
            while thread.is_alive() and time.monotonic() < deadline and not killed:
                busy = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND state = 'active' "
                        "AND (query ILIKE 'COPY%' OR query ILIKE 'INSERT%')"
                    ),
                    {"db": db_name},
                ).scalar()
                if busy:
                    killed = conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": db_name},
                    ).scalar()
                time.sleep(0.005)
        thread.join(120)
        killer.dispose()
        assert killed, "the ingest finished before it could be interrupted; make the upload larger"
        first = outcome.get("response")
        if first is not None:
            assert isinstance(first, httpx.Response)
            assert first.status_code in (200, 500, 503), first.text
            assert first.headers["content-type"].startswith("application/json")
        # Whatever the first answer, the data is all there or not at all.
        after_kill = _counts(fresh_db_url)
        first_ok = isinstance(first, httpx.Response) and first.status_code == 200
        if first_ok:
            assert after_kill["presentations"] == N_PRES
        else:
            assert after_kill == {"presentations": 0, "spike_trains": 0, "responses": 0}, after_kill
        retry = httpx.post(url, files=files, headers=headers, timeout=120)
        assert retry.status_code == 200, retry.text
        result = retry.json()
        assert result["spikes"] == N_SPIKES and result["presentations"] == N_PRES
        assert result["repeated"] is first_ok
    final = _counts(fresh_db_url)
    assert final == {
        "presentations": N_PRES,
        "spike_trains": len(lab.site_ids),
        "responses": N_PRES * len(lab.site_ids),
    }, final
    with session_scope(fresh_db_url) as db:
        assert db.scalar(select(func.count()).select_from(RecordingSession)) == 1
    get_engine(fresh_db_url).dispose()


def test_unwritable_image_store_is_a_clean_503(client, auth, db_session, settings, tmp_path: Path) -> None:
    """The store root lies under a regular file: every write fails with ENOTDIR."""
    from itloop.storage import get_store

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's parent folder should be")
    settings.store_url = (blocker / "store").as_uri()
    get_store.cache_clear()
    n_images = db_session.scalar(select(func.count()).select_from(Image))
    name = f"unwritable-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(0)
    from tests.reliability.test_uploads import _png

    files = [("files", (f"{i}.png", _png(int(rng.integers(1 << 30)), 8), "image/png")) for i in range(3)]
    r = client.post("/api/v1/image-sets", data={"name": name}, files=files, headers=auth("experimenter"))
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert "image store" in detail and "cannot write" in detail, detail
    assert db_session.scalar(select(func.count()).select_from(Image)) == n_images
    assert db_session.scalar(select(ImageSet.id).where(ImageSet.name == name)) is None
    # No row points to an object the store does not have: none of these images has a row.
    shas = [sha256_hex(encode_png(decode_png(f[1][1]))) for f in files]
    assert not list(db_session.scalars(select(Image.sha256).where(Image.sha256.in_(shas))))
    store = open_store(settings.resolved_store_url)
    assert not any(store.exists(image_key(sha)) for sha in shas)
