"""Six concurrent ``POST /nights`` for one session: exactly one 201, five 409, one night in the database.

Through a live server (uvicorn on a real socket, one thread per client), on both backends: the
guarantee is the partial unique index on active nights per session, so it holds whatever the
timing of the courtesy check before the insert.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import MetaData, func, insert, select

from demo.server import BackgroundServer
from itloop.settings import Settings
from jobs.config import get_worker_config
from jobs.queue import reset_runners
from jobs.registry import load_job_modules
from server.auth import service as auth_service
from server.db.engine import session_scope
from server.jobs.tables import Job, JobState, Night
from server.lab.tables import Subject
from server.recordings.tables import RecordingSession
from tests.conftest import make_settings

N_CLIENTS = 6


@pytest.fixture
def lab(fresh_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str, str]:
    """A recording session and an experimenter token; nights only get queued (no background runner)."""
    monkeypatch.setenv("ITLOOP_INPROCESS_BACKGROUND", "false")
    get_worker_config.cache_clear()
    reset_runners()
    load_job_modules()
    with session_scope(fresh_db_url) as session:
        subject = Subject(name=f"monkey-{uuid.uuid4().hex[:6]}")
        session.add(subject)
        session.flush()
        session.add(RecordingSession(session_id="day1", subject_id=subject.id, day=1))
        user = auth_service.create_user(session=session, name="exp", role="experimenter")
        token = auth_service.create_token(session=session, user=user)
    yield make_settings(fresh_db_url, tmp_path / "data"), "day1", token
    reset_runners()
    get_worker_config.cache_clear()


def test_concurrent_night_starts_for_one_session_make_one_night(lab: tuple[Settings, str, str]) -> None:
    settings, session_id, token = lab
    barrier = threading.Barrier(N_CLIENTS)
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    with BackgroundServer(settings) as server:

        def start() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                barrier.wait()
                response = client.post(
                    "/api/v1/nights",
                    json={"session_id": session_id, "params": {"candidates": ["tiny_cnn"]}},
                    headers={"Authorization": f"Bearer {token}"},
                )
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=start) for _ in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [409] * (N_CLIENTS - 1), [(r.status_code, r.text) for r in answers]
    winner = next(r.json() for r in answers if r.status_code == 201)
    for r in answers:
        if r.status_code == 409:
            assert "already" in r.json()["detail"] and session_id in r.json()["detail"]
    with session_scope(settings.resolved_database_url) as db:
        nights = db.scalars(select(Night)).all()
        assert [n.id for n in nights] == [winner["id"]]
        # Only the winner's jobs exist: the losers' transactions left nothing behind.
        assert db.scalar(select(func.count()).select_from(Job).where(Job.night_id != winner["id"])) == 0
        # Once the night is over, the session may have another.
        nights[0].state = JobState.failed
    with BackgroundServer(settings) as server:
        again = httpx.post(
            f"{server.url}/api/v1/nights",
            json={"session_id": session_id, "params": {"candidates": ["tiny_cnn"]}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    assert again.status_code == 201, again.text


def test_the_database_itself_refuses_a_second_active_night(fresh_db_url: str) -> None:
    """No check-then-act: a raw insert of a second active night fails; finished nights do not count."""
    from sqlalchemy.exc import IntegrityError

    with session_scope(fresh_db_url) as session:
        subject = Subject(name="monkey-raw")
        session.add(subject)
        session.flush()
        rec = RecordingSession(session_id="raw", subject_id=subject.id, day=1)
        session.add(rec)
        session.flush()
        states = (JobState.succeeded, JobState.failed, JobState.running)
        session.add_all([Night(session_pk=rec.id, state=s) for s in states])
        rec_pk = rec.id
    for state in (JobState.queued, JobState.waiting, JobState.running):
        with pytest.raises(IntegrityError), session_scope(fresh_db_url) as session:
            session.add(Night(session_pk=rec_pk, state=state))
    with session_scope(fresh_db_url) as session:
        session.add(Night(session_pk=rec_pk, state=JobState.cancelled))
        assert session.scalar(select(func.count()).select_from(Night)) == 4


def test_upgrading_a_database_with_duplicate_active_nights_keeps_the_oldest(
    backend: str, tmp_path: Path
) -> None:
    """Revision 0002 on data made before it: the oldest active night of a session stays, the
    others fail (their unfinished jobs cancelled, a running one asked to stop), so the index fits."""
    from server.db import migrate
    from server.db.engine import get_engine
    from tests.conftest import new_database

    url, cleanup = new_database(backend, tmp_path, f"dup_{uuid.uuid4().hex[:8]}")
    try:
        migrate.downgrade(url, "0001")
        # Subjects and sessions as revision 0001 has them (later revisions add columns the ORM
        # classes already know): rows written through the tables reflected from the database.
        old = MetaData()
        old.reflect(get_engine(url), only=["subjects", "recording_sessions"])
        now = datetime.now(UTC)
        with session_scope(url) as session:
            subject_id = session.execute(
                insert(old.tables["subjects"])
                .values(name="monkey-dup", species="Macaca mulatta", notes="", created_at=now)
                .returning(old.tables["subjects"].c.id)
            ).scalar_one()
            rec_id = session.execute(
                insert(old.tables["recording_sessions"])
                .values(session_id="dup", subject_id=subject_id, day=1, state="open", meta={}, created_at=now)
                .returning(old.tables["recording_sessions"].c.id)
            ).scalar_one()
            nights = [
                Night(session_pk=rec_id, state=s) for s in ("running", "queued", "succeeded", "running")
            ]
            session.add_all(nights)
            session.flush()
            ids = [n.id for n in nights]
            session.add_all(
                [
                    Job(kind="night.refit", night_id=ids[1], state="queued"),
                    Job(kind="night.refit", night_id=ids[3], state="running"),
                    Job(kind="night.refit", night_id=ids[0], state="queued"),
                ]
            )
        get_engine(url).dispose()
        migrate.upgrade(url)
        with session_scope(url) as session:
            states = {n.id: (n.state, n.error) for n in session.scalars(select(Night))}
            assert states[ids[0]] == ("running", None)
            assert states[ids[2]] == ("succeeded", None)
            for loser in (ids[1], ids[3]):
                assert states[loser][0] == JobState.failed and "already active" in states[loser][1]
            jobs = {j.night_id: j for j in session.scalars(select(Job))}
            assert (jobs[ids[1]].state, jobs[ids[1]].cancel_requested) == (JobState.cancelled, True)
            assert (jobs[ids[3]].state, jobs[ids[3]].cancel_requested) == (JobState.running, True)
            assert (jobs[ids[0]].state, jobs[ids[0]].cancel_requested) == (JobState.queued, False)
        migrate.check(url)
        get_engine(url).dispose()
    finally:
        cleanup()
