"""Housekeeping threads: the embedded server's periodic reaper and the workers' liveness in the database.

The periodic reaper is what lets ``itloop serve`` on the embedded default recover without a
restart: a job whose heartbeat goes stale *after* the server started is re-queued, and queued
jobs its thread pool does not hold (the pool died with a killed server) are enqueued again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from itloop.settings import Settings
from server.app import create_app
from server.db.base import utcnow
from server.db.engine import session_scope
from server.jobs import service
from server.jobs.tables import Job, JobState
from tests.conftest import make_settings
from tests.worker import jobs_for_tests as tj
from tests.worker.conftest import load, submit, wait_for
from worker.config import get_worker_config
from worker.liveness import start_embedded_housekeeping, start_liveness
from worker.queue import InProcessRunner, get_runner, reset_runners


@pytest.fixture
def embedded(job_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded default as ``itloop serve`` runs it: a background thread pool, reaper every 0.2 s."""
    monkeypatch.setenv("ITLOOP_INPROCESS_BACKGROUND", "true")
    monkeypatch.setenv("ITLOOP_REAP_EVERY_S", "0.2")
    monkeypatch.setenv("ITLOOP_LIVENESS_S", "0.2")
    get_worker_config.cache_clear()
    reset_runners()
    return job_settings


def test_the_embedded_reaper_recovers_jobs_of_a_killed_server_while_serving(
    embedded: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "marks"
    url = embedded.resolved_database_url
    # What a server killed mid-night leaves: a job queued in a pool that died with it...
    get_runner(embedded, background=False)  # this "previous server" enqueues nothing
    queued = submit(embedded, "test.echo", {"tag": "q", "marker": str(marker)})
    runner = get_runner(embedded, background=True)
    assert isinstance(runner, InProcessRunner) and runner.present_job_ids() == set()
    housekeeping = start_embedded_housekeeping(embedded)
    try:
        wait_for(lambda: load(embedded, queued).state == JobState.succeeded, what="the re-enqueued job")
        # ... and, found only after the start (no longer a one-off pass at startup), a job whose
        # worker died: its heartbeat goes stale while this server is already serving.
        with session_scope(url) as session:
            row = Job(
                kind="test.sleep",
                params={"seconds": 0.1, "marker": str(marker)},
                queue=embedded.queue_name,
                state=JobState.running,
                attempts=1,
                max_attempts=2,
                worker="killed-server:1:itloop-job_0",
                started_at=utcnow() - timedelta(hours=1),
                heartbeat_at=utcnow() - timedelta(hours=1),
            )
            session.add(row)
            session.flush()
            lost = row.id
        wait_for(lambda: load(embedded, lost).state == JobState.succeeded, what="the stale job, re-run")
    finally:
        for thread in housekeeping:
            thread.stop()
    job = load(embedded, lost)
    assert job.attempts == 2 and "attempt 2 of 2" in job.log_tail
    assert sorted(m[3] for m in tj.marks(marker)) == ["", "q"]  # each ran once
    assert runner.present_job_ids() == set()  # the pool holds nothing once both are done


def test_health_counts_live_workers_from_the_database(job_settings: Settings, tmp_path: Path) -> None:
    beats = [start_liveness(job_settings, kind, ["itloop", "itloop-gpu"]) for kind in ("rq", "polling")]
    try:
        wait_for(lambda: _health(job_settings)["workers"]["alive"] == 2, what="two liveness beats")
        workers = _health(job_settings)["workers"]
        assert workers["by_kind"] == {"polling": 1, "rq": 1}
        assert workers["by_queue"] == {"itloop": 2, "itloop-gpu": 2}
    finally:
        for beat in beats:
            beat.stop()
    assert _health(job_settings)["workers"]["alive"] == 0  # a clean stop removes the row
    # A worker killed with kill -9 leaves its row; it stops counting once its beat is old.
    with session_scope(job_settings.resolved_database_url) as session:
        service.beat_worker(session, "host:1:rq", "rq", ["itloop"])
    assert _health(job_settings)["workers"]["alive"] == 1
    with session_scope(job_settings.resolved_database_url) as session:
        from server.jobs.tables import WorkerBeat

        session.execute(update(WorkerBeat).values(seen_at=utcnow() - timedelta(hours=1)))
    assert _health(job_settings)["workers"]["alive"] == 0


def test_health_says_states_never_internal_error_text(tmp_path: Path) -> None:
    """Nothing reachable: 503 with states only; no exception text, address or driver name leaks."""
    s = Settings(
        env="test",
        data_dir=tmp_path,
        database_url="postgresql+psycopg://nobody:pw@127.0.0.1:1/none?connect_timeout=1",
        redis_url="redis://127.0.0.1:1/0",
    )
    with TestClient(create_app(s)) as client:
        r = client.get("/api/v1/health")
    assert r.status_code == 503
    assert r.json() == {
        "status": "unhealthy",
        "schema": None,  # unknowable without the database
        "database": {"ok": False, "backend": "postgresql", "state": "unreachable"},
        "queue": {"ok": False, "backend": "redis", "state": "unreachable"},
        "workers": {"alive": None},
    }


def _health(settings: Settings) -> dict:  # type: ignore[type-arg]
    s = make_settings(settings.resolved_database_url, settings.data_dir)
    with TestClient(create_app(s)) as client:
        r = client.get("/api/v1/health")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]
