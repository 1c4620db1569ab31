"""Faults of the job system, with the commands users run: ``itloop worker`` (forking) and ``itloop serve``.

(1) kill -9 a forking worker (and its work horse) mid-synthesis: the other worker re-runs the
    lost shard once its heartbeat is stale; the batch is byte for byte the one an undisturbed
    night makes, published once, every image whole in the store.
(2) Redis stops mid-night (a private redis-server on its own port; the shared one is never
    touched) and comes back empty: the forking workers stay up, ``/health`` says Redis is down
    and the workers are alive (and no error text), and the night completes untouched.
(3) kill -9 ``itloop serve`` on the embedded default (SQLite, jobs in the server's own thread
    pool, no Redis) mid-night, start it again: the night completes on its own.

Tiny nights (``NIGHT`` of ``test_multiworker``) keep each under a minute or two on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from demo.server import BackgroundServer, free_port
from itloop.sha256 import sha256_hex
from itloop.storage import get_store, image_key
from jobs.config import get_worker_config
from jobs.queue import reset_runners
from server.auth import service as auth_service
from server.batches import service as batches
from server.batches.tables import Batch
from server.db import migrate
from server.db.engine import get_engine, session_scope
from server.jobs.tables import JobState
from tests.conftest import make_settings
from tests.factories import night_jobs, wait_for
from tests.worker.conftest import ITLOOP_CLI, ROOT, WorkerProcess, parent_pid
from tests.worker.test_multiworker import (
    CPU,
    ENV,
    GPU,
    NIGHT,
    TERMINAL,
    Lab,
    batch_signature,
    night_state,
    pg_lab,  # noqa: F401 - fixture
    pid_of,
    run_to_end,
    seed_lab_with_day0,
    start_night,
)

pytestmark = pytest.mark.slow
# A stale threshold well above the 0.5 s heartbeat, so only the killed job goes stale.
STALE_S = "8"
# Shards long enough (about 1 s each on 2 CPU cores) to be caught mid-synthesis: with NIGHT's
# budget of 8 a shard could end between two looks, and every shard of the night with it.
SLOW_SHARDS = {"restarts": 4, "budget": 4000}


def forking_worker(lab: Lab, log: Path, monkeypatch: pytest.MonkeyPatch, **extra: str) -> WorkerProcess:
    """``itloop worker --queue itloop-gpu --queue itloop``: the compose command, forking a horse per job."""
    s = lab.settings
    env = {
        **ENV,
        "ITLOOP_STALE_AFTER_S": STALE_S,
        "ITLOOP_LIVENESS_S": "0.5",
        "ITLOOP_DATABASE_URL": s.resolved_database_url,
        "ITLOOP_REDIS_URL": s.redis_url or "",
        "ITLOOP_STORE_URL": s.resolved_store_url,
        "ITLOOP_DATA_DIR": str(s.data_dir),
        "ITLOOP_DEVICE": "cpu",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return WorkerProcess(log, "--queue", GPU, "--queue", CPU, command=[ITLOOP_CLI, "worker"])


def assert_published_once_and_whole(lab: Lab, night_id: int) -> None:
    """One batch for the night (next to day 0's), every image of it readable and matching its hash."""
    store = get_store(lab.settings.resolved_store_url)
    with session_scope(lab.url) as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 2  # day 0 + tonight
        batch = session.get(Batch, night_state(lab, night_id)[2])
        assert batch is not None
        manifest = batches.get_manifest(session=session, batch_id=batch.batch_id)
    assert manifest["images"]
    for image in manifest["images"]:
        assert sha256_hex(store.get(image_key(image["sha256"]))) == image["sha256"]


def test_a_forking_worker_killed_mid_synthesis_changes_nothing(
    pg_lab: Callable[[str], Lab],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    get_worker_config.cache_clear()
    calm = pg_lab("one")
    calm_night = start_night(calm, SLOW_SHARDS)
    run_to_end(calm, calm_night, [forking_worker(calm, tmp_path / "calm.log", monkeypatch)], timeout_s=240)
    expected = batch_signature(calm, calm_night)

    lab = pg_lab("many")
    night = start_night(lab, SLOW_SHARDS)
    workers = [forking_worker(lab, tmp_path / f"w{i}.log", monkeypatch) for i in range(2)]

    def a_shard_is_synthesizing() -> bool:
        # Running and past its first heartbeat: its horse has been synthesizing for a while.
        # (Progress moves only as cases finish, which in these one-site shards is at the very
        # end: waiting for progress > 0 caught a shard in its last milliseconds, or not at all.)
        for w in workers:
            assert w.proc.poll() is None, w.output()
        return any(
            j.kind == "night.synthesize"
            and j.state == JobState.running
            and j.heartbeat_at is not None
            and j.started_at is not None
            and (j.heartbeat_at - j.started_at).total_seconds() > 0.3
            for j in night_jobs(lab, night)
        )

    victim = None
    while victim is None:
        wait_for(a_shard_is_synthesizing, timeout_s=180, what="a synthesis shard in progress")
        running = [
            j for j in night_jobs(lab, night) if j.kind == "night.synthesize" and j.state == JobState.running
        ]
        if not running:
            continue
        shard = running[0]
        horse = pid_of(shard)
        try:
            parent = parent_pid(horse)
            os.kill(horse, signal.SIGKILL)  # the whole worker dies: its work horse...
        except (FileNotFoundError, ProcessLookupError):
            continue  # that shard just finished: take the next one
        if next(j for j in night_jobs(lab, night) if j.id == shard.id).state == JobState.succeeded:
            continue  # the kill hit a finished horse not yet reaped (a zombie): take the next shard
        victim = next(w for w in workers if w.proc.pid == parent)
        victim.kill()  # ... and the worker itself
    survivor = next(w for w in workers if w is not victim)

    run_to_end(lab, night, [survivor], timeout_s=240)
    rows = {j.id: j for j in night_jobs(lab, night)}
    assert (rows[shard.id].state, rows[shard.id].attempts) == (JobState.succeeded, 2)
    assert "--- attempt 2 of" in rows[shard.id].log_tail  # re-run after the reaper re-queued it
    assert batch_signature(lab, night) == expected, "the disturbed night made a different batch"
    assert_published_once_and_whole(lab, night)


# --- Redis outage ------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test only, on a free port, without persistence: stopping it loses
    everything it held, the harshest outage (the compose Redis keeps its data)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the Redis outage test"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_redis_outage_mid_night_leaves_workers_up_and_the_night_completes(
    pg_lab: Callable[[str], Lab],  # noqa: F811
    private_redis: PrivateRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    get_worker_config.cache_clear()
    lab = pg_lab("one")
    lab.settings = lab.settings.model_copy(update={"redis_url": private_redis.url})
    reset_runners()
    night = start_night(lab)
    # Reconnect waits are capped at 2 s here to keep the test short; the default cap is 30 s,
    # and nothing in the mechanism depends on how long Redis stays away.
    workers = [
        forking_worker(lab, tmp_path / f"w{i}.log", monkeypatch, ITLOOP_REDIS_RETRY_MAX_S="2")
        for i in range(2)
    ]

    def refits_done() -> bool:
        for w in workers:
            assert w.proc.poll() is None, w.output()
        return any(j.kind == "night.select" and j.state != JobState.waiting for j in night_jobs(lab, night))

    wait_for(refits_done, timeout_s=180, what="the night past its refits")
    private_redis.stop()
    outage_s = float(os.environ.get("ITLOOP_TEST_REDIS_OUTAGE_S", "8"))
    down_since = time.monotonic()
    with BackgroundServer(lab.settings) as api:
        seen: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() - down_since < outage_s:
            r = httpx.get(f"{api.url}/api/v1/health", timeout=10)
            assert r.status_code == 503, r.text
            seen.append(r.json())
            for w in workers:
                assert w.proc.poll() is None, f"a worker died while Redis was down:\n{w.output()[-3000:]}"
            time.sleep(0.5)
    body = seen[-1]
    assert body["status"] == "unhealthy" and body["queue"] == {
        "ok": False,
        "backend": "redis",
        "state": "unreachable",
    }
    assert body["database"]["ok"] is True
    assert body["workers"]["alive"] == 2 and body["workers"]["by_kind"] == {"rq": 2}, body
    text = str(seen)
    for leak in ("Error", "refused", "127.0.0.1", str(private_redis.port)):
        assert leak not in text, f"/health shows internal text {leak!r}: {text[:500]}"

    private_redis.start()  # same port, empty: nothing of the queues survived
    run_to_end(lab, night, workers, timeout_s=240)  # asserts both workers are still up
    logs = "".join(w.output() for w in workers)
    assert "Redis unreachable" in logs or "could not connect to Redis" in logs, logs[-3000:]
    assert_published_once_and_whole(lab, night)


# --- the embedded default: itloop serve killed mid-night ----------------------------------


class Serve:
    """``itloop serve`` as a user starts it, in a data folder of its own (SQLite, in-process jobs)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
        env.update(
            PYTHONPATH=str(ROOT),
            ITLOOP_DATA_DIR=str(data_dir),
            ITLOOP_RIG_TIME="",
            ITLOOP_DEVICE="cpu",
            ITLOOP_LOG_LEVEL="INFO",
            ITLOOP_HEARTBEAT_S="0.5",
            ITLOOP_STALE_AFTER_S="4",
            ITLOOP_LIVENESS_S="0.5",  # beats well inside the 4 s window (the default 5 s is not)
            ITLOOP_REAP_EVERY_S="1",
            ITLOOP_REQUEUE_GRACE_S="0",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        self._log = open(log, "ab")  # closed in kill(
        self.log = log
        self.proc = subprocess.Popen(
            [ITLOOP_CLI, "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"itloop serve did not come up:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


def test_killing_the_embedded_server_mid_night_and_restarting_it_completes_the_night(
    tmp_path: Path,
) -> None:
    data = tmp_path / "itloop-data"
    settings = make_settings(f"sqlite:///{(data / 'itloop.db').resolve()}", data)
    migrate.upgrade(settings.resolved_database_url)
    lab = seed_lab_with_day0(settings)
    with session_scope(lab.url) as session:
        user = auth_service.create_user(session=session, name="exp", role="experimenter")
        token = auth_service.create_token(session=session, user=user)
    headers = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "serve.log"
    server = Serve(data, log)
    try:
        r = httpx.post(
            f"{server.url}/api/v1/nights",
            json={"session_id": lab.session_id, "params": NIGHT},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        night = r.json()["id"]

        def mid_synthesis() -> bool:
            assert server.proc.poll() is None, log.read_text()
            rows = night_jobs(lab, night)
            return any(j.kind == "night.synthesize" and j.state == JobState.running for j in rows)

        wait_for(mid_synthesis, timeout_s=180, what="the night's synthesis")
        server.kill()  # kill -9: the running shard and the pool's queued shards die with it
        rows = night_jobs(lab, night)
        assert any(j.state == JobState.running for j in rows)
        assert any(j.state == JobState.queued for j in rows), [(j.kind, j.state) for j in rows]

        server = Serve(data, log)  # nobody touches the night: the server recovers it itself
        wait_for(
            lambda: night_state(lab, night)[0] in TERMINAL, timeout_s=240, what=f"night {night} to finish"
        )
        state, error, _ = night_state(lab, night)
        assert state == JobState.succeeded, f"{error}\n{log.read_text()[-4000:]}"
        assert all(j.state == JobState.succeeded for j in night_jobs(lab, night))
        workers = httpx.get(f"{server.url}/api/v1/health", timeout=10).json()["workers"]
        assert workers["alive"] >= 1 and "inprocess" in workers["by_kind"], workers  # the server itself
        assert_published_once_and_whole(lab, night)
    finally:
        server.kill()
        get_engine(lab.url).dispose()
