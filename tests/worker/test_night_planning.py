"""The night's plan at ``POST /nights``: refused (409) when it cannot fit, expected time on record."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from server.jobs.tables import Job, Night
from server.lab.tables import Array, Site, Subject
from server.recordings.tables import RecordingSession
from worker.night_plan import CACHE_NAME, cache_key, load_throughput, record_throughput


def _lab(db: Session, name: str, n_sites: int = 20) -> None:
    subject = Subject(name=f"{name}-monkey")
    db.add(subject)
    db.flush()
    array = Array(subject_id=subject.id, name="a")
    db.add(array)
    db.flush()
    db.add_all(Site(site_id=f"{name}-s{i}", array_id=array.id) for i in range(n_sites))
    db.add(RecordingSession(session_id=name, subject_id=subject.id))
    db.commit()


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


PARAMS = {"epsilons": [1.0, 2.0, 4.0], "clean_per_site": 3, "targeted_per_site": 0, "restarts": 8}


def test_a_night_that_cannot_fit_is_refused_with_both_times(
    client, auth: Callable[[str], dict[str, str]], db_session: Session, worker_env: None
) -> None:
    _lab(db_session, "late-day")
    nights = db_session.scalar(select(func.count(Night.id)))
    jobs = db_session.scalar(select(func.count(Job.id)))
    params = {**PARAMS, "budget": 320, "deadline": _in(60), "deadline_margin_s": 30}
    r = client.post(
        "/api/v1/nights", json={"session_id": "late-day", "params": params}, headers=auth("experimenter")
    )
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "deadline" in detail and "expected to take" in detail and "remain" in detail
    assert db_session.scalar(select(func.count(Night.id))) == nights
    assert db_session.scalar(select(func.count(Job.id))) == jobs


def test_the_plan_fits_the_budget_to_the_deadline_and_is_on_record(
    client, auth: Callable[[str], dict[str, str]], db_session: Session, worker_env: None, settings: Settings
) -> None:
    _lab(db_session, "plan-day")
    # 20 sites x 3 images x 2 directions, 3 epsilons: 120 grids; at 2000 evals/s a budget of 320
    # costs 120 * (320 + 2 * 80) / 2000 = 28.8 s, a budget of 80 only 7.2 s.
    (settings.data_dir / CACHE_NAME).write_text(
        json.dumps(
            {cache_key(c, str(settings.device)): {"evals_per_s": 2000.0, "shards": 1} for c in ("tiny_cnn",)}
        )
    )
    params = {
        **PARAMS,
        "candidates": ["tiny_cnn"],
        "budget": 320,
        "deadline": _in(600 + 15),
        "deadline_margin_s": 600,
    }
    r = client.post(
        "/api/v1/nights", json={"session_id": "plan-day", "params": params}, headers=auth("experimenter")
    )
    assert r.status_code == 201, r.text
    night = client.get(f"/api/v1/nights/{r.json()['id']}", headers=auth("viewer")).json()
    timing = night["timing"]
    assert timing["throughput_source"] == "measured" and timing["budget"] < 320
    assert timing["expected_synthesis_s"] <= timing["available_s"] <= 15
    assert night["params"]["budget"] == timing["budget"] and night["params"]["sites_per_shard"] >= 1
    assert timing["actual_synthesis_s"] is None  # nothing has run yet


def test_shards_record_their_throughput(settings: Settings) -> None:
    record_throughput(settings, "tiny_cnn", 1000, 2.0)
    record_throughput(settings, "tiny_cnn", 1000, 1.0)
    entry = load_throughput(settings)[cache_key("tiny_cnn", str(settings.device))]
    assert entry == {"evals_per_s": 750.0, "shards": 2}
    record_throughput(settings, "tiny_cnn", 0, 1.0)  # nothing measured: nothing recorded
    assert load_throughput(settings)[cache_key("tiny_cnn", str(settings.device))]["shards"] == 2


def test_a_deadline_that_is_no_time_is_a_422(
    client, auth: Callable[[str], dict[str, str]], db_session: Session, worker_env: None
) -> None:
    _lab(db_session, "odd-day", n_sites=2)
    params = {**PARAMS, "deadline": "tomorrow at eight"}
    r = client.post(
        "/api/v1/nights", json={"session_id": "odd-day", "params": params}, headers=auth("experimenter")
    )
    assert r.status_code == 422, r.text
    assert "deadline" in r.json()["detail"]


def test_the_last_finished_night_predicts_the_next(
    client, auth: Callable[[str], dict[str, str]], db_session: Session, worker_env: None
) -> None:
    _lab(db_session, "history-day")
    rec = db_session.scalar(select(RecordingSession).where(RecordingSession.session_id == "history-day"))
    t0 = datetime(2026, 1, 1, 22, 0)
    done = Night(session_pk=rec.id, state="succeeded", params={"expected": {"evals": 5000}}, finished_at=t0)
    db_session.add(done)
    db_session.flush()
    for start, end in ((0, 60), (30, 100)):  # two shards: synthesis spans 100 s
        db_session.add(
            Job(
                kind="night.synthesize",
                night_id=done.id,
                state="succeeded",
                started_at=t0 + timedelta(seconds=start),
                finished_at=t0 + timedelta(seconds=end),
            )
        )
    db_session.commit()
    r = client.post(
        "/api/v1/nights", json={"session_id": "history-day", "params": PARAMS}, headers=auth("experimenter")
    )
    assert r.status_code == 201, r.text
    timing = r.json()["timing"]
    assert timing["throughput_source"] == "last night"
    evals = r.json()["params"]["expected"]["evals"]
    assert timing["expected_synthesis_s"] == pytest.approx(evals / 50.0)  # 5000 evals in 100 s
