"""The background event poster against a real itloop server, including a network outage."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import func, select

from itloop.settings import Settings
from itloop.storage import open_store
from rigclient import EventPoster, PresentationEvent, RigClient, frames
from server.auth import service as auth_service
from server.batches.tables import Batch
from server.db.engine import session_scope
from server.recordings.tables import RigEvent
from tests.conftest import make_settings
from tests.server.test_batches import make_batch, make_rig


class Server:
    """uvicorn in a thread on a fixed port, which can be stopped and started again (an outage)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from server.app import create_app

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        server = uvicorn.Server(
            uvicorn.Config(create_app(self.settings), log_level="warning", lifespan="off")
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@dataclass
class Live:
    url: str
    db_url: str
    server: Server
    batch_id: str
    token: str
    manifest: dict[str, Any]


@pytest.fixture
def live(fresh_db_url: str, tmp_path: Path) -> Iterator[Live]:
    settings = make_settings(fresh_db_url, tmp_path / "server")
    store = open_store(settings.resolved_store_url)
    with session_scope(fresh_db_url) as session:
        rig_id = make_rig(session)
        user = auth_service.create_user(session=session, name=rig_id, role="rig")
        token = auth_service.create_token(session=session, user=user)
        batch = make_batch(session, store, rig_id=rig_id, n_images=4, repeats=50)  # 200 presentations
        batch_id, manifest = batch.batch_id, batch.manifest
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(settings, port)
    server.start()
    try:
        yield Live(f"http://127.0.0.1:{port}", fresh_db_url, server, batch_id, token, manifest or {})
    finally:
        try:
            server.stop()
        except AssertionError:
            pass


def _events(live: Live) -> list[PresentationEvent]:
    return [
        PresentationEvent(f"{live.batch_id}:{s['seq']}", s["seq"], s["image_sha256"], onset_s=0.2 * s["seq"])
        for s in live.manifest["sequence"]
    ]


def _stored(live: Live) -> int:
    with session_scope(live.db_url) as session:
        pk = session.scalar(select(Batch.id).where(Batch.batch_id == live.batch_id))
        return int(
            session.scalar(select(func.count()).select_from(RigEvent).where(RigEvent.batch_pk == pk)) or 0
        )


def test_add_never_blocks_and_everything_arrives(live: Live, tmp_path: Path) -> None:
    spool = tmp_path / "spool.ndjson"
    with RigClient(live.url, live.token, tmp_path / "cache") as client:
        poster = EventPoster(client, live.batch_id, spool=spool, batch_size=32, interval_s=0.05).start()
        for ev in _events(live):
            poster.add(ev)
        summary = poster.close(timeout_s=30)
    assert summary == {"new": 200, "repeated": 0, "pending": 0, "rejected": 0, "failures": 0}
    assert _stored(live) == 200
    assert len(spool.read_text().splitlines()) == 200


def test_add_returns_while_the_server_hangs(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: posts hang, the loop does not."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # never accepted: connects succeed, answers never come
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        with RigClient(url, "itl_x", tmp_path / "cache", timeout_s=3) as client:
            poster = EventPoster(client, "b", batch_size=5, interval_s=0.01).start()
            poster.add({"event_id": "b:0", "seq": 0, "image_sha256": "0" * 64, "onset_s": 0.0})
            time.sleep(0.3)  # the thread is now inside a POST that will not return for 3 s
            started = time.perf_counter()
            for k in range(1, 500):
                poster.add({"event_id": f"b:{k}", "seq": k, "image_sha256": "0" * 64, "onset_s": 0.2 * k})
            elapsed = time.perf_counter() - started
            # Blocked on the hanging POST, 499 adds would take until its 3 s timeout; a bound at
            # half of it tells the two apart without timing a busy machine to the millisecond.
            assert elapsed < 1.5 and poster.pending == 500
            assert poster.close(timeout_s=0.1)["pending"] == 500


def test_outage_loses_nothing(live: Live, tmp_path: Path) -> None:
    events = _events(live)
    with RigClient(live.url, live.token, tmp_path / "cache", timeout_s=2) as client:
        poster = EventPoster(
            client, live.batch_id, batch_size=20, interval_s=0.05, backoff_s=0.05, max_backoff_s=0.2
        )
        poster.start()
        for ev in events[:60]:
            poster.add(ev)
        assert poster.flush(timeout_s=20)
        live.server.stop()  # the network goes down mid-session
        for ev in events[60:150]:
            poster.add(ev)  # the presentation loop carries on
        deadline = time.monotonic() + 10
        while poster.failures < 3:
            assert time.monotonic() < deadline, "the poster never tried during the outage"
            time.sleep(0.05)
        assert poster.pending == 90 and not poster.flush(timeout_s=0.3)
        live.server.start()  # back up
        for ev in events[150:]:
            poster.add(ev)
        summary = poster.close(timeout_s=30)
    assert summary["pending"] == 0 and summary["rejected"] == 0 and summary["failures"] >= 3
    assert summary["new"] + summary["repeated"] == 200 and summary["new"] == 200
    assert _stored(live) == 200


def test_refused_events_are_isolated_and_kept(live: Live, tmp_path: Path) -> None:
    events = [e.to_dict() for e in _events(live)[:10]]
    events[3] = {**events[3], "image_sha256": "0" * 64}  # not an image of the batch: 422
    with RigClient(live.url, live.token, tmp_path / "cache") as client:
        poster = EventPoster(client, live.batch_id, batch_size=10, interval_s=0.05).start()
        for ev in events:
            poster.add(ev)
        summary = poster.close(timeout_s=30)
    assert summary["new"] == 9 and summary["rejected"] == 1 and summary["pending"] == 0
    assert poster.rejected[0][0]["event_id"] == events[3]["event_id"] and "422" in poster.rejected[0][1]


def test_resume_reposts_a_spool_after_a_crash(live: Live, tmp_path: Path) -> None:
    spool = tmp_path / "spool.ndjson"
    spool.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in _events(live)[:50]))
    with RigClient(live.url, live.token, tmp_path / "cache") as client:
        client.post_events(live.batch_id, _events(live)[:20])  # posted before the crash
        poster = EventPoster(client, live.batch_id, spool=tmp_path / "new-spool.ndjson", interval_s=0.05)
        assert poster.resume() == 0  # its own spool is empty
        poster.spool = spool
        assert poster.resume() == 50
        poster.start()
        summary = poster.close(timeout_s=30)
    assert summary["new"] == 30 and summary["repeated"] == 20 and _stored(live) == 50


def test_frames() -> None:
    assert frames(100, 60) == 6 and frames(100, 120) == 12 and frames(0, 60) == 0
    assert frames(100, 144) == 14  # 14.4 frames: rounded, with a warning
    with pytest.raises(ValueError):
        frames(100, 0)


def test_bundle_brings_the_calibration_pattern(live: Live, tmp_path: Path) -> None:
    import hashlib

    from rigclient import RigClientError

    with RigClient(live.url, live.token, tmp_path / "cache") as client:
        manifest = client.get_manifest(live.batch_id)
        with pytest.raises(RigClientError, match="fetch_bundle"):
            client.calibration_path(manifest)
        fetched = client.fetch_bundle(live.batch_id)
        assert fetched == manifest
        path = client.calibration_path(manifest)
        assert path is not None
        expected = manifest.extra["display"]["calibration"]["sha256"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
