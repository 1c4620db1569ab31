"""The rig client end to end against a live uvicorn server on a committed database."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from itloop.storage import ObjectStore, image_key, open_store
from rigclient import HashMismatch, Manifest, PresentationEvent, RigClient, RigClientError
from server.auth import service as auth_service
from server.db.engine import session_scope
from tests.conftest import make_settings
from tests.server.test_batches import make_batch, make_rig


@dataclass
class Live:
    url: str
    db_url: str
    store: ObjectStore
    rig_id: str
    token: str
    viewer_token: str


@pytest.fixture
def live(fresh_db_url: str, tmp_path: Path) -> Iterator[Live]:
    from server.app import create_app

    settings = make_settings(fresh_db_url, tmp_path / "server")
    store = open_store(settings.resolved_store_url)
    with session_scope(fresh_db_url) as session:
        rig_id = make_rig(session)
        tokens = {}
        for role in ("rig", "viewer"):
            # a rig token acts only for the rig its user is named after
            name = rig_id if role == "rig" else f"{role}-user"
            user = auth_service.create_user(session=session, name=name, role=role)
            tokens[role] = auth_service.create_token(session=session, user=user)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", fresh_db_url, store, rig_id, tokens["rig"], tokens["viewer"])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _publish(live: Live, n_images: int = 4) -> str:
    with session_scope(live.db_url) as session:
        return make_batch(session, live.store, rig_id=live.rig_id, n_images=n_images).batch_id


def test_pull_show_post_complete(live: Live, tmp_path: Path) -> None:
    with RigClient(live.url, live.token, tmp_path / "cache", live.rig_id, backoff_s=0.01) as client:
        assert client.next_batch() is None
        batch_id = _publish(live)
        manifest = client.next_batch()
        assert isinstance(manifest, Manifest) and manifest.batch_id == batch_id
        assert len(manifest.images) == 4 and len(manifest.sequence) == 8 and manifest.extra["day"] == 1
        assert client.get_manifest(batch_id) == manifest

        fetched = client.fetch_images(manifest)
        assert (
            sorted(fetched.downloaded) == sorted(i.sha256 for i in manifest.images) and fetched.cached == []
        )
        for sha, path in fetched.paths.items():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        again = client.fetch_images(manifest)
        assert again.downloaded == [] and len(again.cached) == 4

        events = [
            PresentationEvent(f"{batch_id}:{s.seq}", s.seq, s.image_sha256, onset_s=0.2 * s.seq)
            for s in manifest.sequence
        ]
        assert client.post_events(batch_id, events[:5]) == {"received": 5, "new": 5, "repeated": 0}
        # A crash after posting: the rig re-posts everything, as NDJSON, in small chunks.
        total = client.post_events(batch_id, events, ndjson=True, chunk_size=3)
        assert total == {"received": 8, "new": 3, "repeated": 5}
        done = client.complete(batch_id)
        assert done["batch_id"] == batch_id and done["events"] == 8
        assert client.next_batch() is None


def test_cache_is_shared_and_corruption_is_repaired(live: Live, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with RigClient(live.url, live.token, cache, live.rig_id, backoff_s=0.01) as client:
        manifest = client.get_manifest(_publish(live))
        client.fetch_images(manifest)
        victim = manifest.images[0].sha256
        client.image_path(victim).write_bytes(b"bit rot")
        repaired = client.fetch_images(manifest)
        assert repaired.downloaded == [victim] and len(repaired.cached) == 3
        assert hashlib.sha256(client.image_path(victim).read_bytes()).hexdigest() == victim


def test_hash_mismatch_is_refused(live: Live, tmp_path: Path) -> None:
    with RigClient(live.url, live.token, tmp_path / "cache", live.rig_id, backoff_s=0.01) as client:
        manifest = client.get_manifest(_publish(live))
        victim = manifest.images[1].sha256
        live.store.put(image_key(victim), b"\x89PNG\r\n\x1a\n but not the promised bytes")
        with pytest.raises(HashMismatch, match=victim):
            client.fetch_images(manifest)
        assert not client.image_path(victim).exists()


def test_bundle_fills_the_cache(live: Live, tmp_path: Path) -> None:
    with RigClient(live.url, live.token, tmp_path / "cache", live.rig_id, backoff_s=0.01) as client:
        assert client.fetch_bundle() is None
        batch_id = _publish(live)
        manifest = client.fetch_bundle()
        assert manifest is not None and manifest.batch_id == batch_id
        assert manifest == client.next_batch()
        after = client.fetch_images(manifest)
        assert after.downloaded == [] and len(after.cached) == 4


def test_errors_and_retries(live: Live, tmp_path: Path) -> None:
    viewer = RigClient(live.url, live.viewer_token, tmp_path / "v", live.rig_id, backoff_s=0.01)
    with pytest.raises(RigClientError, match="403") as info:
        viewer.next_batch()
    assert info.value.status == 403
    viewer.close()
    with RigClient(live.url, live.token, tmp_path / "c", live.rig_id, backoff_s=0.01) as client:
        batch_id = _publish(live)
        bad = [{"event_id": "x", "seq": 0, "image_sha256": "0" * 64, "onset_s": 0.0}]
        with pytest.raises(RigClientError, match="item 0") as info:
            client.post_events(batch_id, bad)
        assert info.value.status == 422
    # Nothing listening: connection errors are retried, then reported.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with RigClient(dead, live.token, tmp_path / "d", "r", retries=2, backoff_s=0.01) as client:
        started = time.monotonic()
        with pytest.raises(RigClientError, match="after 3 attempts"):
            client.post_events("b", [{"event_id": "x", "seq": 0, "image_sha256": "0" * 64, "onset_s": 0.0}])
        assert time.monotonic() - started >= 0.03  # two backoff sleeps: 0.01 + 0.02
