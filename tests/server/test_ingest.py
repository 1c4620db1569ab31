"""Spike upload: counts, responses against a brute-force count, idempotency, replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.recordings import service
from server.recordings.tables import Response
from tests.server.test_recordings_helpers import (
    brute_force_counts,
    create_session,
    make_lab,
    row_counts,
    synth,
    upload,
    write_csv,
    write_nwb,
    write_parquet,
)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "nwb"])
def test_upload_counts_and_responses_match_brute_force(
    client, auth, db_session: Session, tmp_path: Path, fmt: str
) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=1)
    files = {
        "csv": lambda: write_csv(tmp_path, data),
        "parquet": lambda: write_parquet(tmp_path, data),
        "nwb": lambda: {"file": write_nwb(tmp_path / "s.nwb", data)},
    }[fmt]()
    r = upload(client, auth, lab.sid, files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "session_id": lab.sid,
        "sites": 6,
        "presentations": 40,
        "spikes": len(data.times),
        "responses": 6 * 40,
        "repeated": False,
        "replaced": False,
        "window_ms": [70.0, 170.0],
    }
    table = service.responses_by_image(
        session=db_session, session_pk=_pk(db_session, lab.sid), fixation_only=False
    )
    assert table.site_ids == sorted(lab.site_ids)
    expected = brute_force_counts(data, table.site_ids, (70.0, 170.0)) / 0.1
    # regroup the brute-force matrix by image, same order as the table
    order = np.argsort(data.onsets, kind="stable")
    images = [data.images[i] for i in order]
    for sha, trials in zip(table.image_sha256, table.trials, strict=True):
        rows = [k for k, h in enumerate(images) if h == sha]
        np.testing.assert_allclose(trials, expected[rows])
    assert expected.sum() > 0
    padded = table.padded()
    assert padded.shape == (len(table.image_ids), 6, max(len(t) for t in table.trials))
    assert np.isnan(padded).any() == (len({len(t) for t in table.trials}) > 1)
    # fixation filter drops exactly the bad trials
    fixed = service.responses_by_image(session=db_session, session_pk=_pk(db_session, lab.sid))
    assert sum(len(t) for t in fixed.trials) == int(data.fixation.sum())


def _pk(db: Session, session_id: str) -> int:
    return service.get_session(session=db, session_id=session_id).id


def test_reupload_is_idempotent_across_formats(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=2)
    first = upload(client, auth, lab.sid, write_csv(tmp_path, data)).json()
    before = row_counts(db_session)
    again = upload(client, auth, lab.sid, write_csv(tmp_path, data))
    assert again.status_code == 200, again.text
    assert again.json() == {**first, "repeated": True}
    # the same data as NWB is the same upload
    nwb = upload(client, auth, lab.sid, {"file": write_nwb(tmp_path / "x.nwb", data)}).json()
    assert nwb == {**first, "repeated": True}
    assert row_counts(db_session) == before
    mine = service.counts(session=db_session, session_pk=_pk(db_session, lab.sid))
    assert mine == {"sites": 6, "presentations": 40, "spikes": len(data.times), "responses": 240}


def test_different_data_is_409_unless_replace(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    upload(client, auth, lab.sid, write_csv(tmp_path / "a", synth(lab, seed=3)))
    before = row_counts(db_session)
    other = synth(lab, seed=4, n_pres=30)
    r = upload(client, auth, lab.sid, write_csv(tmp_path / "b", other))
    assert r.status_code == 409 and "replace=true" in r.json()["detail"]
    assert row_counts(db_session) == before
    r = upload(client, auth, lab.sid, write_csv(tmp_path / "b", other), replace="true")
    assert r.status_code == 200, r.text
    assert r.json()["replaced"] is True and r.json()["presentations"] == 30
    after = row_counts(db_session)
    assert after["presentations"] == before["presentations"] - 40 + 30
    assert after["responses"] == before["responses"] - 240 + 180


def test_custom_window_and_compute_responses(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=5)
    r = upload(client, auth, lab.sid, write_csv(tmp_path, data), window_start_ms=50, window_end_ms=250)
    assert r.status_code == 200 and r.json()["window_ms"] == [50.0, 250.0]
    rec = service.get_session(session=db_session, session_id=lab.sid)
    n = service.compute_responses(session=db_session, recording=rec, window_ms=(0.0, 100.0))
    assert n == 240
    again = service.compute_responses(session=db_session, recording=rec, window_ms=(0.0, 100.0))
    assert again == 240
    stored = db_session.scalars(
        select(Response).where(Response.session_pk == rec.id, Response.window_end_ms == 100.0)
    ).all()
    assert len(stored) == 240
    table = service.responses_by_image(
        session=db_session, session_pk=rec.id, window_ms=(0.0, 100.0), fixation_only=False
    )
    expected = brute_force_counts(data, table.site_ids, (0.0, 100.0)) / 0.1
    assert np.isclose(sum(t.sum() for t in table.trials), expected.sum())
    wide = service.responses_by_image(
        session=db_session, session_pk=rec.id, window_ms=(50.0, 250.0), fixation_only=False
    )
    expected = brute_force_counts(data, wide.site_ids, (50.0, 250.0)) / 0.2
    assert np.isclose(sum(t.sum() for t in wide.trials), expected.sum())


def test_nwb_without_event_ids_and_in_processing_module(
    client, auth, db_session: Session, tmp_path: Path
) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=6)
    path = write_nwb(tmp_path / "p.nwb", data, with_event_ids=False, where="processing")
    r = upload(client, auth, lab.sid, {"file": path})
    assert r.status_code == 200, r.text
    assert r.json()["presentations"] == 40
    rows = client.get(
        f"/api/v1/sessions/{lab.sid}/responses", params={"limit": 1}, headers=auth("viewer")
    ).json()
    assert rows["items"][0]["event_id"] == "0"


def test_responses_json_paginates_and_filters(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=7)
    upload(client, auth, lab.sid, write_csv(tmp_path, data))
    page = client.get(
        f"/api/v1/sessions/{lab.sid}/responses", params={"limit": 100, "offset": 200}, headers=auth("viewer")
    ).json()
    assert page["total"] == 240 and len(page["items"]) == 40 and page["offset"] == 200
    one = client.get(
        f"/api/v1/sessions/{lab.sid}/responses", params={"site_id": lab.site_ids[2]}, headers=auth("viewer")
    ).json()
    assert one["total"] == 40 and {i["site_id"] for i in one["items"]} == {lab.site_ids[2]}
    expected = brute_force_counts(data, [lab.site_ids[2]], (70.0, 170.0))[:, 0]
    assert [i["count"] for i in one["items"]] == expected.tolist()
    assert all(i["rate_hz"] == i["count"] * 10 for i in one["items"])
