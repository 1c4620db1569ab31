"""Lab registration: subjects, arrays, sites (idempotent, conflicts are 409), rigs (admin only)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.lab.tables import Site

API = "/api/v1"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _subject_with_array(client, auth) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    subject, array = _name("m"), _name("arr")
    assert (
        client.post(f"{API}/subjects", json={"name": subject}, headers=auth("experimenter")).status_code
        == 201
    )
    r = client.post(f"{API}/subjects/{subject}/arrays", json={"name": array}, headers=auth("experimenter"))
    assert r.status_code == 201, r.text
    return subject, array


def test_subjects_roles_and_conflicts(client, auth) -> None:  # type: ignore[no-untyped-def]
    name = _name("monkey")
    body = {"name": name, "notes": "chronic arrays in pIT and aIT"}
    assert client.post(f"{API}/subjects", json=body).status_code == 401
    assert client.post(f"{API}/subjects", json=body, headers=auth("viewer")).status_code == 403
    assert client.post(f"{API}/subjects", json=body, headers=auth("rig")).status_code == 403
    r = client.post(f"{API}/subjects", json=body, headers=auth("experimenter"))
    assert r.status_code == 201 and r.json()["species"] == "Macaca mulatta"
    again = client.post(f"{API}/subjects", json=body, headers=auth("experimenter"))
    assert again.status_code == 201 and again.json()["id"] == r.json()["id"]
    clash = client.post(f"{API}/subjects", json={**body, "notes": "other"}, headers=auth("experimenter"))
    assert clash.status_code == 409 and "notes" in clash.json()["detail"]
    assert client.get(f"{API}/subjects/{name}", headers=auth("viewer")).json()["name"] == name
    assert client.get(f"{API}/subjects/nobody", headers=auth("viewer")).status_code == 404
    assert client.get(f"{API}/subjects", headers=auth("rig")).status_code == 403
    page = client.get(f"{API}/subjects", params={"limit": 1000}, headers=auth("viewer")).json()
    assert name in [s["name"] for s in page["items"]] and page["total"] >= 1


def test_arrays_by_path_and_by_body(client, auth) -> None:  # type: ignore[no-untyped-def]
    subject, array = _subject_with_array(client, auth)
    r = client.post(
        f"{API}/arrays", json={"name": "second", "subject": subject}, headers=auth("experimenter")
    )
    assert r.status_code == 201 and r.json()["subject"] == subject
    assert client.post(f"{API}/arrays", json={"name": "x"}, headers=auth("experimenter")).status_code == 422
    assert (
        client.post(
            f"{API}/arrays", json={"name": "x", "subject": subject}, headers=auth("viewer")
        ).status_code
        == 403
    )
    clash = client.post(
        f"{API}/subjects/{subject}/arrays", json={"name": array, "region": "V4"}, headers=auth("experimenter")
    )
    assert clash.status_code == 409
    listed = client.get(f"{API}/subjects/{subject}/arrays", headers=auth("viewer")).json()
    assert [a["name"] for a in listed["items"]] == sorted([array, "second"]) and listed["total"] == 2
    assert (
        client.get(f"{API}/arrays", params={"subject": subject}, headers=auth("viewer")).json()["total"] == 2
    )
    assert client.get(f"{API}/subjects/nobody/arrays", headers=auth("viewer")).status_code == 404


def test_sites_bulk_idempotent_and_conflicts(client, auth, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    subject, array = _subject_with_array(client, auth)
    ids = [_name("site") for _ in range(3)]
    sites = [
        {"site_id": s, "array": array, "electrode": f"e{i}", "meta": {"depth_um": 100 * i}}
        for i, s in enumerate(ids)
    ]
    assert client.post(f"{API}/sites", json=sites).status_code == 401
    assert client.post(f"{API}/sites", json=sites, headers=auth("viewer")).status_code == 403
    r = client.post(f"{API}/sites", json=sites, headers=auth("experimenter"))
    assert r.status_code == 201, r.text
    assert r.json()["created"] == 3 and r.json()["existing"] == 0
    assert [s["subject"] for s in r.json()["items"]] == [subject] * 3
    again = client.post(f"{API}/sites", json=sites, headers=auth("experimenter"))
    assert again.status_code == 200 and again.json()["created"] == 0 and again.json()["existing"] == 3
    assert [s["id"] for s in again.json()["items"]] == [s["id"] for s in r.json()["items"]]
    # One new site plus one conflicting: 409 and the new one is not stored either.
    new_id = _name("site")
    mixed = [{"site_id": new_id, "array": array}, {**sites[1], "electrode": "moved"}]
    clash = client.post(f"{API}/sites", json=mixed, headers=auth("experimenter"))
    assert (
        clash.status_code == 409
        and ids[1] in clash.json()["detail"]
        and "electrode" in clash.json()["detail"]
    )
    assert db_session.scalar(select(func.count()).select_from(Site).where(Site.site_id == new_id)) == 0
    twice = [{"site_id": new_id, "array": array}, {"site_id": new_id, "array": array, "unit": "su1"}]
    assert client.post(f"{API}/sites", json=twice, headers=auth("experimenter")).status_code == 409
    unknown = client.post(
        f"{API}/sites", json=[{"site_id": new_id, "array": "nope"}], headers=auth("experimenter")
    )
    assert unknown.status_code == 404 and "array" in unknown.json()["detail"]
    assert client.post(f"{API}/sites", json=[], headers=auth("experimenter")).status_code == 422


def test_ambiguous_array_name_needs_subject(client, auth) -> None:  # type: ignore[no-untyped-def]
    a, b = _name("m"), _name("m")
    shared = _name("arr")
    for subject in (a, b):
        client.post(f"{API}/subjects", json={"name": subject}, headers=auth("experimenter"))
        client.post(f"{API}/subjects/{subject}/arrays", json={"name": shared}, headers=auth("experimenter"))
    site = _name("site")
    r = client.post(f"{API}/sites", json=[{"site_id": site, "array": shared}], headers=auth("experimenter"))
    assert r.status_code == 422 and "subject" in r.json()["detail"]
    r = client.post(
        f"{API}/sites", json=[{"site_id": site, "array": shared, "subject": b}], headers=auth("experimenter")
    )
    assert r.status_code == 201 and r.json()["items"][0]["subject"] == b


def test_list_sites_pagination_and_filters(client, auth) -> None:  # type: ignore[no-untyped-def]
    subject, array = _subject_with_array(client, auth)
    client.post(f"{API}/subjects/{subject}/arrays", json={"name": "other"}, headers=auth("experimenter"))
    sites = [{"site_id": f"{subject}-s{i:02d}", "array": array, "active": i % 4 != 0} for i in range(10)]
    sites += [{"site_id": f"{subject}-t{i}", "array": "other", "subject": subject} for i in range(2)]
    assert client.post(f"{API}/sites", json=sites, headers=auth("experimenter")).status_code == 201
    url = f"{API}/sites"
    assert client.get(url, headers=auth("rig")).status_code == 403
    page = client.get(
        url, params={"subject": subject, "limit": 5, "offset": 0}, headers=auth("viewer")
    ).json()
    assert page["total"] == 12 and len(page["items"]) == 5 and page["items"][0]["site_id"] == f"{subject}-s00"
    last = client.get(
        url, params={"subject": subject, "limit": 5, "offset": 10}, headers=auth("viewer")
    ).json()
    assert [s["site_id"] for s in last["items"]] == [f"{subject}-t0", f"{subject}-t1"]
    by_array = client.get(url, params={"subject": subject, "array": array}, headers=auth("viewer")).json()
    assert by_array["total"] == 10
    inactive = client.get(url, params={"subject": subject, "active": False}, headers=auth("viewer")).json()
    assert sorted(s["site_id"] for s in inactive["items"]) == [f"{subject}-s{i:02d}" for i in (0, 4, 8)]
    one = client.get(f"{url}/{subject}-s03", headers=auth("viewer"))
    assert one.status_code == 200 and one.json()["array"] == array
    assert client.get(f"{url}/nope", headers=auth("viewer")).status_code == 404
    assert client.get(url, params={"limit": 0}, headers=auth("viewer")).status_code == 422


def test_rigs_admin_only(client, auth) -> None:  # type: ignore[no-untyped-def]
    subject, _ = _subject_with_array(client, auth)
    rig = _name("rig")
    body = {"rig_id": rig, "name": "Rig A", "subject": subject, "screen": {"distance_cm": 57}}
    assert client.post(f"{API}/rigs", json=body).status_code == 401
    assert client.post(f"{API}/rigs", json=body, headers=auth("experimenter")).status_code == 403
    r = client.post(f"{API}/rigs", json=body, headers=auth("admin"))
    assert r.status_code == 201 and r.json()["subject"] == subject
    assert client.post(f"{API}/rigs", json=body, headers=auth("admin")).status_code == 201
    assert client.post(f"{API}/rigs", json={**body, "name": "B"}, headers=auth("admin")).status_code == 409
    assert (
        client.post(
            f"{API}/rigs", json={**body, "rig_id": _name("r"), "subject": "nobody"}, headers=auth("admin")
        ).status_code
        == 404
    )
    for role in ("rig", "viewer"):
        listed = client.get(f"{API}/rigs", params={"limit": 1000}, headers=auth(role))
        assert listed.status_code == 200 and rig in [x["rig_id"] for x in listed.json()["items"]]
    assert client.get(f"{API}/rigs/{rig}", headers=auth("rig")).json()["screen"] == {"distance_cm": 57}
    assert client.get(f"{API}/rigs").status_code == 401
