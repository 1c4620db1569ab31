"""In-process runner: cancellation, timeouts, compare-and-set claims, lost leases; the jobs API."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from itloop.cli import app  # imported before any test replaces itloop.settings.get_settings
from itloop.settings import Settings
from jobs import state as service
from jobs.execute import run_job
from jobs.queue import InProcessRunner, get_runner
from server.db.engine import session_scope
from server.jobs.tables import JobState
from tests.factories import load, submit, wait_for
from tests.worker import jobs_for_tests as tj


def runner(settings: Settings) -> InProcessRunner:
    r = get_runner(settings, background=False)
    assert isinstance(r, InProcessRunner)
    return r


def test_cancel_a_running_job(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    job_id = submit(job_settings, "test.sleep", {"seconds": 30, "marker": str(marker)})
    follower = submit(job_settings, "test.echo", {}, depends_on=[job_id])
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(job_id, job_settings)))
    thread.start()
    wait_for(lambda: load(job_settings, job_id).state == JobState.running, what="job running")
    with session_scope(job_settings.resolved_database_url) as session:
        assert service.cancel(session, job_id).cancel_requested
    thread.join(timeout=10)
    assert outcome == [JobState.cancelled]
    job = load(job_settings, job_id)
    assert (job.state, job.attempts) == (JobState.cancelled, 1)
    assert 0 < job.progress < 1 and job.progress_message == "sleeping"
    assert not marker.exists()
    assert load(job_settings, follower).error == f"dependency {job_id} cancelled"


def test_cancel_a_queued_job_before_it_runs(job_settings: Settings) -> None:
    job_id = submit(job_settings, "test.echo", {})
    with session_scope(job_settings.resolved_database_url) as session:
        assert service.cancel(session, job_id).state == JobState.cancelled
    assert runner(job_settings).run_until_idle() == 0
    assert load(job_settings, job_id).attempts == 0


def test_timeout_fails_the_job_without_retry(job_settings: Settings) -> None:
    job_id = submit(job_settings, "test.sleep", {"seconds": 30}, timeout_s=1, max_attempts=3)
    assert runner(job_settings).run_until_idle() == 1
    job = load(job_settings, job_id)
    assert (job.state, job.attempts, job.error) == (JobState.failed, 1, "timed out after 1 s")


def test_a_missing_checkpoint_is_not_retried(job_settings: Settings, tmp_path: Path) -> None:
    """Running again cannot make a file appear: one attempt, and the error says where it goes."""
    marker, path = tmp_path / "marks", tmp_path / "checkpoints" / "resnet50.pt"
    job_id = submit(job_settings, "test.checkpoint", {"path": str(path), "marker": str(marker)})
    assert runner(job_settings).run_until_idle() == 1
    job = load(job_settings, job_id)
    assert (job.state, job.attempts) == (JobState.failed, 1)
    assert str(path) in (job.error or "") and "put the weights file there" in (job.error or "")
    assert len(tj.marks(marker)) == 1


def test_two_runners_never_run_one_job_twice(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    job_id = submit(job_settings, "test.sleep", {"seconds": 0.5, "marker": str(marker)})
    barrier = threading.Barrier(4)
    outcomes: list[str | None] = []

    def race() -> None:
        barrier.wait()
        outcomes.append(run_job(job_id, job_settings))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(outcomes, key=str) == [None, None, None, JobState.succeeded]
    assert len(tj.marks(marker)) == 1
    assert load(job_settings, job_id).attempts == 1


def test_a_worker_that_lost_its_lease_cannot_record(job_settings: Settings) -> None:
    job_id = submit(job_settings, "test.echo", {}, max_attempts=2)
    url = job_settings.resolved_database_url
    with session_scope(url) as session:
        token = service.claim(session, job_id, "w1").attempts  # type: ignore[union-attr]
        assert service.claim(session, job_id, "w2") is None  # compare-and-set: already running
    with session_scope(url) as session:
        assert service.reap_stale(session, stale_after_s=0.0) == ([job_id], [])
    with session_scope(url) as session:
        assert service.touch(session, job_id, token) == (False, False)
        assert service.finish(session, job_id, token, state=JobState.succeeded, result={"x": 1}) is None
    assert runner(job_settings).run_until_idle() == 1
    job = load(job_settings, job_id)
    assert (job.state, job.attempts) == (JobState.succeeded, 2)
    assert job.result == {"tag": None, "upstream": []}


def test_polling_worker_cli_runs_queued_jobs(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    ids = [submit(job_settings, "test.echo", {"tag": str(i), "marker": str(marker)}) for i in range(3)]
    out = CliRunner().invoke(app, ["worker", "--burst"])
    assert out.exit_code == 0, out.output
    assert [load(job_settings, i).state for i in ids] == [JobState.succeeded] * 3
    assert len(tj.marks(marker)) == 3


# --- API ---------------------------------------------------------------------------------


@pytest.fixture
def api_jobs(db_session: Session, settings: Settings, worker_env: None) -> dict[str, int]:
    service.bind(db_session, settings)
    a = service.submit(db_session, "test.echo", {"tag": "a"}, settings=settings)
    b = service.submit(db_session, "test.echo", {"tag": "b"}, depends_on=[a.id], settings=settings)
    c = service.submit(db_session, "test.sleep", {"seconds": 1}, settings=settings)
    db_session.commit()
    return {"a": a.id, "b": b.id, "c": c.id}


def test_api_lists_and_shows_jobs(
    client, auth: Callable[[str], dict[str, str]], api_jobs: dict[str, int]
) -> None:
    page = client.get("/api/v1/jobs", params={"kind": "test.echo", "limit": 1}, headers=auth("viewer"))
    assert page.status_code == 200
    body = page.json()
    assert body["total"] >= 2 and body["limit"] == 1 and len(body["items"]) == 1
    waiting = client.get("/api/v1/jobs", params={"state": "waiting"}, headers=auth("viewer")).json()
    assert api_jobs["b"] in [j["id"] for j in waiting["items"]]
    assert all(j["state"] == "waiting" for j in waiting["items"])
    assert client.get("/api/v1/jobs", params={"state": "bogus"}, headers=auth("viewer")).status_code == 422

    one = client.get(f"/api/v1/jobs/{api_jobs['b']}", headers=auth("viewer"))
    assert one.status_code == 200
    job = one.json()
    assert job["depends_on"] == [api_jobs["a"]] and job["state"] == "waiting"
    assert {"progress", "attempts", "max_attempts", "log_tail", "error", "result"} <= set(job)
    assert client.get("/api/v1/jobs/987654321", headers=auth("viewer")).status_code == 404
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers=auth("rig")).status_code == 403


def test_api_cancel_needs_an_experimenter(
    client, auth: Callable[[str], dict[str, str]], api_jobs: dict[str, int]
) -> None:
    url = f"/api/v1/jobs/{api_jobs['c']}/cancel"
    denied = client.post(url, headers=auth("viewer"))
    assert denied.status_code == 403 and "detail" in denied.json()
    assert client.get(f"/api/v1/jobs/{api_jobs['c']}", headers=auth("viewer")).json()["state"] == "queued"
    done = client.post(url, headers=auth("experimenter"))
    assert done.status_code == 200
    assert done.json()["state"] == "cancelled" and done.json()["cancel_requested"] is True
    again = client.post(url, headers=auth("experimenter"))
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_api_nights(client, auth: Callable[[str], dict[str, str]], worker_env: None) -> None:
    assert client.get("/api/v1/nights", headers=auth("viewer")).status_code == 200
    assert client.post("/api/v1/nights", json={"session_id": "x"}, headers=auth("viewer")).status_code == 403
    missing = client.post("/api/v1/nights", json={"session_id": "no-such"}, headers=auth("experimenter"))
    assert missing.status_code == 404 and "no-such" in missing.json()["detail"]
    assert client.get("/api/v1/nights/987654", headers=auth("viewer")).status_code == 404


def test_api_shows_a_night_with_its_jobs(
    client, auth: Callable[[str], dict[str, str]], db_session: Session, settings: Settings, worker_env: None
) -> None:
    from server.jobs.tables import Night
    from server.lab.tables import Subject
    from server.recordings.tables import RecordingSession

    subject = Subject(name="api-night-monkey")
    db_session.add(subject)
    db_session.flush()
    rec = RecordingSession(session_id="api-night-day", subject_id=subject.id)
    db_session.add(rec)
    db_session.flush()
    night = Night(session_pk=rec.id, state="running", partial=True, note="2 of 3 shards")
    db_session.add(night)
    db_session.flush()
    done = service.submit(db_session, "test.echo", {}, night_id=night.id, settings=settings)
    done.state = JobState.succeeded
    service.submit(db_session, "test.echo", {}, night_id=night.id, depends_on=[done.id], settings=settings)
    db_session.commit()

    body = client.get(f"/api/v1/nights/{night.id}", headers=auth("viewer")).json()
    assert body["session_id"] == "api-night-day" and body["state"] == "running"
    assert body["partial"] is True and body["note"] == "2 of 3 shards" and body["batch_id"] is None
    assert [j["state"] for j in body["jobs"]] == ["succeeded", "queued"] and body["progress"] == 0.5
    listed = client.get("/api/v1/nights", headers=auth("viewer")).json()
    assert night.id in [n["id"] for n in listed["items"]]
    jobs = client.get("/api/v1/jobs", params={"night": night.id}, headers=auth("viewer")).json()
    assert jobs["total"] == 2
