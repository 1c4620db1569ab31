"""Bad night parameters are refused at ``POST /nights`` with a 422 naming them, before any job runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.jobs.tables import Job, Night
from server.lab.tables import Subject
from server.recordings.tables import RecordingSession


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"epsilon": [1.0]}, "epsilon"),  # misspelt: would silently run the default epsilons
        ({"candidates": ["resnet18"]}, "resnet18"),
        ({"candidates": ["small_cnn", "nonesuch"]}, "nonesuch"),
        ({"search_share": 1.5}, "search_share"),
        ({"search_share": -0.1}, "search_share"),
        ({"min_transfer_pairs": 0}, "min_transfer_pairs"),
    ],
)
def test_bad_night_params_are_refused_up_front(
    client,
    auth: Callable[[str], dict[str, str]],
    db_session: Session,
    worker_env: None,
    params: dict,
    named: str,
) -> None:
    subject = Subject(name="params-monkey")
    db_session.add(subject)
    db_session.flush()
    db_session.add(RecordingSession(session_id="params-day", subject_id=subject.id))
    db_session.commit()
    nights = db_session.scalar(select(func.count(Night.id)))
    jobs = db_session.scalar(select(func.count(Job.id)))

    r = client.post(
        "/api/v1/nights", json={"session_id": "params-day", "params": params}, headers=auth("experimenter")
    )
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]
    assert db_session.scalar(select(func.count(Night.id))) == nights
    assert db_session.scalar(select(func.count(Job.id))) == jobs
