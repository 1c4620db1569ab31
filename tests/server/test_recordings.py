"""Recording sessions API: create (idempotent), list, get, complete (hooks), and every route's auth."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.server.test_recordings_helpers import create_session, make_lab, synth, upload, write_csv

ROUTES = [
    ("post", "/api/v1/sessions", "experimenter"),
    ("get", "/api/v1/sessions", "viewer"),
    ("get", "/api/v1/sessions/{sid}", "viewer"),
    ("post", "/api/v1/sessions/{sid}/complete", "experimenter"),
    ("post", "/api/v1/sessions/{sid}/spikes", "experimenter"),
    ("get", "/api/v1/sessions/{sid}/responses", "viewer"),
    ("get", "/api/v1/sessions/{sid}/export.nwb", "viewer"),
    ("get", "/api/v1/sessions/{sid}/responses.nc", "viewer"),
]


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
def test_auth_on_every_route(
    client, auth, db_session: Session, tmp_path: Path, method: str, path: str, role: str
) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    url = path.format(sid=lab.sid)
    if method == "get" and "{sid}/" in path:  # reads of data need data
        assert upload(client, auth, lab.sid, write_csv(tmp_path / "d", synth(lab))).status_code == 200
    kwargs: dict = {}
    if url.endswith("/sessions") and method == "post":
        kwargs["json"] = {"session_id": lab.sid, "subject": lab.subject, "day": 1, "meta": {"note": "t"}}
    if url.endswith("/spikes"):
        kwargs["files"] = {k: (p.name, p.read_bytes()) for k, p in write_csv(tmp_path, synth(lab)).items()}
    call = getattr(client, method)
    assert call(url, **kwargs).status_code == 401
    wrong = "rig" if role == "viewer" else "viewer"
    r = call(url, headers=auth(wrong), **kwargs)
    assert r.status_code == 403, r.text
    r = call(url, headers=auth(role), **kwargs)
    assert r.status_code in (200, 201), r.text
    if role == "viewer":  # experimenters and admins may read too
        assert call(url, headers=auth("experimenter"), **kwargs).status_code == 200


def test_create_is_idempotent_and_conflicts_on_difference(client, auth, db_session: Session) -> None:
    lab = make_lab(db_session)
    body = {"session_id": lab.sid, "subject": lab.subject, "day": 3, "meta": {"a": 1}}
    r = client.post("/api/v1/sessions", json=body, headers=auth("experimenter"))
    assert r.status_code == 201 and r.json()["state"] == "open" and r.json()["day"] == 3
    r = client.post("/api/v1/sessions", json=body, headers=auth("experimenter"))
    assert r.status_code == 200 and r.json()["meta"] == {"a": 1}
    r = client.post("/api/v1/sessions", json={**body, "meta": {"a": 2}}, headers=auth("experimenter"))
    assert r.status_code == 409 and lab.sid in r.json()["detail"]
    r = client.post(
        "/api/v1/sessions",
        json={**body, "session_id": "x2", "subject": "nobody"},
        headers=auth("experimenter"),
    )
    assert r.status_code == 422 and "nobody" in r.json()["detail"]
    r = client.post(
        "/api/v1/sessions",
        json={**body, "session_id": "x3", "rig_id": "no-rig"},
        headers=auth("experimenter"),
    )
    assert r.status_code == 422 and "no-rig" in r.json()["detail"]


def test_list_filters_and_paginates(client, auth, db_session: Session) -> None:
    lab = make_lab(db_session)
    other = make_lab(db_session)
    for i in range(5):
        create_session(client, auth, lab, session_id=f"{lab.sid}-{i}")
    create_session(client, auth, other)
    client.post(f"/api/v1/sessions/{lab.sid}-1/complete", headers=auth("experimenter"))
    page = client.get(
        "/api/v1/sessions", params={"subject": lab.subject, "limit": 2, "offset": 1}, headers=auth("viewer")
    ).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["limit"] == 2
    assert {i["subject"] for i in page["items"]} == {lab.subject}
    done = client.get(
        "/api/v1/sessions", params={"subject": lab.subject, "state": "complete"}, headers=auth("viewer")
    ).json()
    assert [i["session_id"] for i in done["items"]] == [f"{lab.sid}-1"]
    assert client.get("/api/v1/sessions", params={"limit": 0}, headers=auth("viewer")).status_code == 422


def test_get_reports_counts_and_404(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=9)
    upload(client, auth, lab.sid, write_csv(tmp_path, data))
    body = client.get(f"/api/v1/sessions/{lab.sid}", headers=auth("viewer")).json()
    assert body["counts"] == {"sites": 6, "presentations": 40, "spikes": len(data.times), "responses": 240}
    assert body["has_data"] is True and body["ingest"]["format"] == "csv" and body["meta"] == {"note": "t"}
    r = client.get(f"/api/v1/sessions/{lab.sid}/export.nwb", headers=auth("viewer"))
    assert r.status_code == 200
    create_session(client, auth, lab, session_id=f"{lab.sid}-empty")
    r = client.get(f"/api/v1/sessions/{lab.sid}-empty/export.nwb", headers=auth("viewer"))
    assert r.status_code == 409 and "no spike data" in r.json()["detail"]
    r = client.get("/api/v1/sessions/nope", headers=auth("viewer"))
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_complete_says_whether_a_night_started(client, auth, db_session: Session) -> None:
    """With ITLOOP_AUTO_NIGHT off (the test settings), the answer says so and no night exists."""
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    r = client.post(f"/api/v1/sessions/{lab.sid}/complete", headers=auth("experimenter"))
    assert r.status_code == 200 and r.json()["state"] == "complete" and r.json()["completed_at"]
    assert r.json()["auto_night"] == {"enabled": False, "night_id": None, "note": None}
    r = client.post(f"/api/v1/sessions/{lab.sid}/complete", headers=auth("experimenter"))
    assert r.status_code == 200 and r.json()["auto_night"] is None  # a repeat starts nothing
    assert client.get("/api/v1/nights", headers=auth("viewer")).json()["total"] == 0
