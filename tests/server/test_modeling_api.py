"""Model versions: the worker's writer, and the dashboard's read API with filters and pagination."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput
from server.jobs.tables import Night
from server.lab.tables import Subject
from server.modeling import service
from server.recordings.tables import RecordingSession
from tests.server.test_recordings_helpers import Lab, make_lab


def _record(db: Session, lab: Lab, version: str, score: float, night: int | None = None, **kw):  # type: ignore[no-untyped-def]
    return service.record_model_version(
        session=db,
        version=version,
        candidate="resnet-l4",
        backbone="resnet50",
        checkpoint_sha256=None,
        layer="layer4",
        pool="avg",
        artifact_key=f"models/{version}.pt",
        trained_on={"night": night, "sessions": ["s"]} if night is not None else {"sessions": ["s"]},
        metrics={"mean_ceiled": score, "nan": float("nan")},
        score=score,
        site_metrics=[
            {
                "site_id": s,
                "predictivity": score + i / 100,
                "noise_ceiling": 0.8,
                "gated": i == 0,
                "gate_reason": "drift" if i == 0 else "",
            }
            for i, s in enumerate(lab.site_ids)
        ],
        **kw,
    )


def test_record_choose_and_read(client, auth, db_session: Session) -> None:
    lab = make_lab(db_session, n_sites=3)
    tag = lab.subject
    v1 = _record(db_session, lab, f"{tag}-v1", 0.4, night=1)
    v2 = _record(db_session, lab, f"{tag}-v2", 0.6, night=2, parent_id=v1.id)
    service.choose(session=db_session, model_version=v2, reason="best ceiled predictivity")
    db_session.commit()
    r = client.get(f"/api/v1/model-versions/{tag}-v2", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chosen"] is True and body["parent_version"] == f"{tag}-v1"
    assert body["chosen_reason"] == "best ceiled predictivity" and body["metrics"]["nan"] is None
    assert [m["site_id"] for m in body["site_metrics"]] == lab.site_ids
    assert body["site_metrics"][0]["gated"] is True and body["site_metrics"][1]["predictivity"] == 0.61
    assert client.get("/api/v1/model-versions/nope", headers=auth("viewer")).status_code == 404
    hist = client.get(
        f"/api/v1/model-versions/sites/{lab.site_ids[1]}/history", headers=auth("viewer")
    ).json()
    assert [h["version"] for h in hist["items"]] == [f"{tag}-v1", f"{tag}-v2"]
    assert [h["predictivity"] for h in hist["items"]] == pytest.approx([0.41, 0.61])
    assert client.get("/api/v1/model-versions/sites/nope/history", headers=auth("viewer")).status_code == 404
    with pytest.raises(Conflict):
        _record(db_session, lab, f"{tag}-v1", 0.1)
    with pytest.raises(InvalidInput, match="unknown site"):
        service.record_model_version(
            session=db_session,
            version=f"{tag}-bad",
            candidate="",
            backbone="b",
            checkpoint_sha256=None,
            layer="l",
            pool="avg",
            artifact_key="k",
            trained_on={},
            metrics={},
            score=None,
            site_metrics=[{"site_id": "ghost"}],
        )


def test_list_filters_and_pagination(client, auth, db_session: Session) -> None:
    lab = make_lab(db_session, n_sites=2)
    tag = lab.subject
    versions = [_record(db_session, lab, f"{tag}-m{i}", 0.1 * i, night=1000 + i % 2) for i in range(5)]
    service.choose(session=db_session, model_version=f"{tag}-m3", reason="r")
    subject = db_session.get(Subject, db_session.query(Subject.id).filter_by(name=lab.subject).scalar())
    rec = RecordingSession(session_id=f"{tag}-night", subject_id=subject.id)
    db_session.add(rec)
    db_session.flush()
    night = Night(session_pk=rec.id, model_version_id=versions[0].id)
    db_session.add(night)
    db_session.commit()
    page = client.get(
        "/api/v1/model-versions", params={"night": 1001, "limit": 1}, headers=auth("viewer")
    ).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert page["items"][0]["version"] == f"{tag}-m3"  # newest first
    used = client.get("/api/v1/model-versions", params={"night": night.id}, headers=auth("viewer")).json()
    assert f"{tag}-m0" in [i["version"] for i in used["items"]]
    chosen = client.get(
        "/api/v1/model-versions", params={"chosen": True, "limit": 1000}, headers=auth("viewer")
    ).json()
    mine = [i["version"] for i in chosen["items"] if i["version"].startswith(tag)]
    assert mine == [f"{tag}-m3"]
    p2 = client.get(
        "/api/v1/model-versions", params={"night": 1000, "offset": 2}, headers=auth("viewer")
    ).json()
    assert p2["total"] == 3 and len(p2["items"]) == 1 and p2["items"][0]["version"] == f"{tag}-m0"


@pytest.mark.parametrize(
    "path", ["/api/v1/model-versions", "/api/v1/model-versions/x", "/api/v1/model-versions/sites/x/history"]
)
def test_auth(client, auth, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=auth("rig")).status_code == 403
    assert client.get(path, headers=auth("viewer")).status_code in (200, 404)
