"""The rig contract over HTTP (DESIGN.md section 5): paths, fields, roles, idempotency."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from itloop.storage import ObjectStore, get_store
from server.batches.tables import Batch
from server.recordings.tables import RigEvent
from tests.server.test_batches import make_batch, make_rig

API = "/api/v1"
MANIFEST_FIELDS = {"batch_id", "rig_id", "published_at", "model_version", "images", "sequence"}


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return get_store(settings.resolved_store_url)


@pytest.fixture
def published(db_session: Session, store: ObjectStore) -> dict:
    batch = make_batch(db_session, store, rig_id=make_rig(db_session))
    db_session.commit()
    assert batch.manifest is not None
    return batch.manifest


def _events(manifest: dict, n: int | None = None) -> list[dict]:
    return [
        {
            "event_id": f"{manifest['batch_id']}:{s['seq']}",
            "seq": s["seq"],
            "image_sha256": s["image_sha256"],
            "onset_s": 0.2 * s["seq"],
            "fixation_ok": s["seq"] % 3 != 0,
        }
        for s in manifest["sequence"][:n]
    ]


def _stored(db_session: Session, batch_id: str) -> int:
    query = select(func.count()).select_from(RigEvent).join(Batch).where(Batch.batch_id == batch_id)
    return db_session.scalar(query) or 0


def test_next_is_204_when_none_and_needs_rig_role(client, auth, rig_auth, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(db_session)
    db_session.commit()
    url = f"{API}/rigs/{rig}/batches/next"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("viewer")).status_code == 403
    r = client.get(url, headers=rig_auth(rig))
    assert r.status_code == 204 and r.content == b""
    assert client.get(url, headers=auth("admin")).status_code == 204
    assert client.get(f"{API}/rigs/nope/batches/next", headers=rig_auth("nope")).status_code == 404


def test_building_batch_is_invisible(client, auth, rig_auth, db_session: Session, store: ObjectStore) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig, publish=False)
    db_session.commit()
    assert client.get(f"{API}/rigs/{rig}/batches/next", headers=rig_auth(rig)).status_code == 204
    r = client.get(f"{API}/batches/{batch.batch_id}", headers=auth("rig"))
    assert r.status_code == 404 and "not published" in r.json()["detail"]
    assert client.get(f"{API}/batches/{batch.batch_id}/bundle", headers=auth("rig")).status_code == 404


def test_manifest_contract(client, auth, rig_auth, published: dict, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    rig, bid = published["rig_id"], published["batch_id"]
    r = client.get(f"{API}/rigs/{rig}/batches/next", headers=rig_auth(rig))
    assert r.status_code == 200
    body = r.json()
    assert MANIFEST_FIELDS <= set(body)
    assert body == published
    assert set(body["images"][0]) == {"sha256", "url", "width", "height", "bytes"}
    assert set(body["sequence"][0]) == {"seq", "image_sha256", "trial", "on_ms", "off_ms"}
    shas = {im["sha256"] for im in body["images"]}
    assert all(s["image_sha256"] in shas for s in body["sequence"])
    assert body["images"][0]["url"] == f"{API}/images/{body['images'][0]['sha256']}"
    for role in ("rig", "viewer", "experimenter", "admin"):
        same = client.get(f"{API}/batches/{bid}", headers=auth(role))
        assert same.status_code == 200 and same.json() == body
    assert client.get(f"{API}/batches/{bid}").status_code == 401
    assert client.get(f"{API}/batches/nope", headers=auth("rig")).status_code == 404
    etag = client.get(f"{API}/batches/{bid}", headers=auth("rig")).headers["etag"]
    assert (
        client.get(f"{API}/batches/{bid}", headers={**auth("rig"), "If-None-Match": etag}).status_code == 304
    )
    settings.public_base_url = "https://lab.example.org/"
    absolute = client.get(f"{API}/batches/{bid}", headers=auth("rig")).json()
    assert (
        absolute["images"][0]["url"] == f"https://lab.example.org{API}/images/{body['images'][0]['sha256']}"
    )


def test_next_is_the_newest_batch_only(
    client, auth, rig_auth, db_session: Session, store: ObjectStore
) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(db_session)
    old = make_batch(db_session, store, rig_id=rig).batch_id
    new = make_batch(db_session, store, rig_id=rig).batch_id
    db_session.commit()
    own = rig_auth(rig)
    nxt = f"{API}/rigs/{rig}/batches/next"
    assert client.get(nxt, headers=own).json()["batch_id"] == new
    assert client.post(f"{API}/batches/{new}/complete", headers=auth("viewer")).status_code == 403
    assert client.post(f"{API}/batches/{new}/complete").status_code == 401
    r = client.post(f"{API}/batches/{new}/complete", headers=own)
    assert r.status_code == 200 and r.json()["batch_id"] == new and r.json()["events"] == 0
    # The newest batch is done: the older, never completed one is superseded, not sent back.
    assert client.get(nxt, headers=own).status_code == 204
    # A superseded batch can still be completed and read (the record); completing again is harmless.
    assert client.post(f"{API}/batches/{old}/complete", headers=own).status_code == 200
    assert client.get(nxt, headers=own).status_code == 204
    assert client.get(f"{API}/batches/{old}", headers=own).status_code == 200
    assert client.post(f"{API}/batches/{old}/complete", headers=own).status_code == 200


def test_images_etag_and_hash(client, auth, published: dict) -> None:  # type: ignore[no-untyped-def]
    sha = published["images"][0]["sha256"]
    url = f"{API}/images/{sha}"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=auth("rig"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert hashlib.sha256(r.content).hexdigest() == sha
    assert len(r.content) == published["images"][0]["bytes"]
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    r304 = client.get(url, headers={**auth("rig"), "If-None-Match": f'"{sha}"'})
    assert r304.status_code == 304 and r304.content == b"" and r304.headers["etag"] == f'"{sha}"'
    other = client.get(url, headers={**auth("viewer"), "If-None-Match": '"' + "0" * 64 + '"'})
    assert other.status_code == 200 and other.content == r.content
    missing = client.get(f"{API}/images/{'0' * 64}", headers=auth("rig"))
    assert missing.status_code == 404 and "detail" in missing.json()
    bad = client.get(f"{API}/images/not-a-hash", headers=auth("rig"))
    assert bad.status_code == 422 and "SHA-256" in bad.json()["detail"]


def test_presentations_idempotent(client, auth, rig_auth, published: dict, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    bid = published["batch_id"]
    url = f"{API}/batches/{bid}/presentations"
    events = _events(published, 5)
    assert client.post(url, json=events).status_code == 401
    assert client.post(url, json=events, headers=auth("viewer")).status_code == 403
    rig = rig_auth(published["rig_id"])
    r = client.post(url, json=events, headers=rig)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 5, "new": 5, "repeated": 0}
    r = client.post(url, json=events, headers=rig)
    assert r.json() == {"received": 5, "new": 0, "repeated": 5}
    assert _stored(db_session, bid) == 5
    rows = db_session.scalars(
        select(RigEvent).join(Batch).where(Batch.batch_id == bid).order_by(RigEvent.seq)
    ).all()
    assert [e.fixation_ok for e in rows] == [s % 3 != 0 for s in range(5)]
    assert [e.event_id for e in rows] == [f"{bid}:{s}" for s in range(5)]


def test_presentations_ndjson(client, rig_auth, published: dict, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    bid = published["batch_id"]
    url = f"{API}/batches/{bid}/presentations"
    events = _events(published)
    body = "\n".join(json.dumps(e) for e in events[2:]) + "\n\n"
    headers = {**rig_auth(published["rig_id"]), "Content-Type": "application/x-ndjson"}
    assert client.post(url, json=events[:4], headers=rig_auth(published["rig_id"])).json()["new"] == 4
    r = client.post(url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": len(events) - 2, "new": len(events) - 4, "repeated": 2}
    assert _stored(db_session, bid) == len(events)
    bad = client.post(url, content=body + "{not json\n", headers=headers)
    assert bad.status_code == 422 and "line" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"image_sha256": "f" * 64}, "not an image of batch"),
        ({"seq": 1}, "shows image"),
        ({"seq": 10_000}, "not in the batch's sequence"),
        ({"onset_s": "soon"}, "onset_s"),
        ({"event_id": ""}, "event_id"),
        ({"image_sha256": "XYZ"}, "image_sha256"),
    ],
)
def test_bad_item_is_422_and_nothing_stored(  # type: ignore[no-untyped-def]
    client, rig_auth, published: dict, db_session: Session, patch: dict, message: str
) -> None:
    bid = published["batch_id"]
    events = _events(published, 4)
    events[2] = {**events[2], **patch}
    r = client.post(f"{API}/batches/{bid}/presentations", json=events, headers=rig_auth(published["rig_id"]))
    assert r.status_code == 422
    assert "item 2" in r.json()["detail"] and message in r.json()["detail"]
    assert _stored(db_session, bid) == 0


def test_presentations_for_unpublished_or_malformed(
    client, auth, db_session: Session, store: ObjectStore
) -> None:  # type: ignore[no-untyped-def]
    # (an unpublished batch is 404 before the rig check; a malformed body 422 before either)
    batch = make_batch(db_session, store, rig_id=make_rig(db_session), publish=False)
    db_session.commit()
    url = f"{API}/batches/{batch.batch_id}/presentations"
    assert client.post(url, json=[], headers=auth("rig")).status_code == 404
    r = client.post(url, json={"event_id": "x"}, headers=auth("rig"))
    assert r.status_code == 422 and "list" in r.json()["detail"]
    r = client.post(url, content=b"\xff{", headers={**auth("rig"), "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_bundle_matches_manifest(client, auth, published: dict) -> None:  # type: ignore[no-untyped-def]
    url = f"{API}/batches/{published['batch_id']}/bundle"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=auth("rig"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        assert names[0] == "manifest.json"
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest == published
        calibration = published["display"]["calibration"]
        assert sorted(names[1:]) == sorted(
            [f"images/{im['sha256']}.png" for im in published["images"]] + [calibration["path"]]
        )
        for im in published["images"]:
            assert hashlib.sha256(zf.read(f"images/{im['sha256']}.png")).hexdigest() == im["sha256"]
        assert hashlib.sha256(zf.read(calibration["path"])).hexdigest() == calibration["sha256"]
    again = client.get(url, headers=auth("viewer"))
    assert again.content == r.content  # deterministic and cached
    assert client.get(url, headers={**auth("rig"), "If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get(f"{API}/batches/nope/bundle", headers=auth("rig")).status_code == 404


def test_list_batches_roles_and_filters(client, auth, db_session: Session, store: ObjectStore) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(db_session)
    make_batch(db_session, store, rig_id=rig)
    building = make_batch(db_session, store, rig_id=rig, publish=False).batch_id
    db_session.commit()
    assert client.get(f"{API}/batches").status_code == 401
    assert client.get(f"{API}/batches", headers=auth("rig")).status_code == 403
    r = client.get(f"{API}/batches", params={"rig": rig, "state": "building"}, headers=auth("viewer"))
    assert r.status_code == 200
    page = r.json()
    assert (
        page["total"] == 1 and page["items"][0]["batch_id"] == building and page["items"][0]["n_images"] == 4
    )
    r = client.get(f"{API}/batches", params={"rig": rig, "limit": 1}, headers=auth("experimenter"))
    assert r.json()["total"] == 2 and len(r.json()["items"]) == 1
    assert client.get(f"{API}/batches", params={"state": "bogus"}, headers=auth("viewer")).status_code == 422


def test_rig_token_acts_only_for_its_own_rig(  # type: ignore[no-untyped-def]
    client, auth, rig_auth, db_session: Session, store: ObjectStore
) -> None:
    mine, theirs = make_rig(db_session), make_rig(db_session)
    their_batch = make_batch(db_session, store, rig_id=theirs)
    db_session.commit()
    assert their_batch.manifest is not None
    bid = their_batch.batch_id
    own = rig_auth(mine)
    events = _events(their_batch.manifest, 3)

    r = client.get(f"{API}/rigs/{theirs}/batches/next", headers=own)
    assert r.status_code == 403 and theirs in r.json()["detail"]
    r = client.post(f"{API}/batches/{bid}/presentations", json=events, headers=own)
    assert r.status_code == 403 and bid in r.json()["detail"]
    assert client.post(f"{API}/batches/{bid}/complete", headers=own).status_code == 403
    # A rig account that is named after no rig acts for none.
    assert client.post(f"{API}/batches/{bid}/complete", headers=auth("rig")).status_code == 403
    # Nothing was stored, the batch is not completed, and its own rig still gets it.
    assert _stored(db_session, bid) == 0
    db_session.refresh(their_batch)
    assert their_batch.completed_at is None
    assert client.get(f"{API}/rigs/{theirs}/batches/next", headers=rig_auth(theirs)).json()["batch_id"] == bid
    # Reading a manifest is not rig-bound (images are shared and content-addressed).
    assert client.get(f"{API}/batches/{bid}", headers=own).status_code == 200
    # Its own rig and an admin may act.
    r = client.post(f"{API}/batches/{bid}/presentations", json=events, headers=rig_auth(theirs))
    assert r.status_code == 200 and r.json()["new"] == 3
    assert client.post(f"{API}/batches/{bid}/complete", headers=auth("admin")).status_code == 200


def test_the_rigs_first_pull_is_on_record(client, auth, rig_auth, published: dict) -> None:  # type: ignore[no-untyped-def]
    """``pulled_at`` is set by the batch's rig fetching it, once; people reading it do not set it."""
    rig, bid = published["rig_id"], published["batch_id"]

    def pulled() -> str | None:
        r = client.get(f"{API}/batches", headers=auth("viewer"), params={"rig": rig})
        assert r.status_code == 200, r.text
        return next(b["pulled_at"] for b in r.json()["items"] if b["batch_id"] == bid)

    assert client.get(f"{API}/rigs/{rig}/batches/next", headers=auth("admin")).status_code == 200
    assert client.get(f"{API}/batches/{bid}", headers=auth("viewer")).status_code == 200
    assert pulled() is None
    assert client.get(f"{API}/rigs/{rig}/batches/next", headers=rig_auth(rig)).status_code == 200
    first = pulled()
    assert first is not None
    assert client.get(f"{API}/rigs/{rig}/batches/next", headers=rig_auth(rig)).status_code == 200
    assert pulled() == first  # the first pull stays the record


def test_initial_batch_can_show_the_first_clean_images_only(client, auth, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    """``clean_images`` limits day 0 to the first N clean images (set order); references stay whole."""
    import numpy as np

    from tests.server.test_images import _files

    rig = make_rig(db_session)
    db_session.commit()
    rng = np.random.default_rng(5)
    exp = auth("experimenter")
    clean = client.post(
        f"{API}/image-sets", data={"name": "clean-d0"}, files=_files(rng, list("abcde")), headers=exp
    )
    ref = client.post(
        f"{API}/image-sets",
        data={"name": "ref-d0", "is_reference": "true"},
        files=_files(rng, ["r1", "r2"]),
        headers=exp,
    )
    assert clean.status_code == 201 and ref.status_code == 201, (clean.text, ref.text)
    url = f"{API}/rigs/{rig}/batches/initial"
    bad = client.post(url, json={"clean_images": 0}, headers=exp)
    assert bad.status_code == 422 and "clean_images" in bad.text
    r = client.post(url, json={"clean_images": 2, "repeats": 1}, headers=exp)
    assert r.status_code == 201, r.text
    shown = {im["sha256"] for im in r.json()["images"]}
    members = client.get(f"{API}/image-sets/clean-d0", headers=exp).json()
    refs = client.get(f"{API}/image-sets/ref-d0", headers=exp).json()
    order = [m["sha256"] for m in members["images"]]
    assert shown == set(order[:2]) | {m["sha256"] for m in refs["images"]}
