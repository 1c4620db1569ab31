"""Images: deterministic PNG, strict decoding, content addressing, image sets, lineage."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.errors import InvalidUpload, NotFound
from itloop.settings import Settings
from itloop.storage import LocalStore, ObjectStore, StoreError, get_store, image_key
from server.images import service
from server.images.png import decode_png, encode_png
from server.images.tables import Image
from server.lab import service as lab
from server.modeling.tables import ModelVersion

API = "/api/v1"


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return get_store(settings.resolved_store_url)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20220612)


def _pil_png(img: PILImage.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def test_encode_is_deterministic_and_layout_free(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (3, 16, 24), dtype=np.uint8)
    png = encode_png(pixels)
    assert png == encode_png(pixels.copy()) == encode_png(pixels.transpose(1, 2, 0))
    assert png.startswith(b"\x89PNG") and b"tIME" not in png and b"tEXt" not in png
    back = decode_png(png)
    assert back.dtype == np.uint8 and back.shape == (3, 16, 24) and np.array_equal(back, pixels)
    with pytest.raises(InvalidUpload, match="uint8"):
        encode_png(pixels.astype(np.float32))
    with pytest.raises(InvalidUpload, match="shape"):
        encode_png(pixels[0])


def test_decode_accepts_rgba_and_grey(rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    out = decode_png(_pil_png(PILImage.fromarray(rgba, "RGBA")))
    assert np.array_equal(out, rgba[..., :3].transpose(2, 0, 1))
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    out = decode_png(_pil_png(PILImage.fromarray(grey, "L")))
    assert out.shape == (3, 10, 12) and all(np.array_equal(out[c], grey) for c in range(3))


def test_decode_rejects_what_is_not_an_rgb_png(rng: np.random.Generator) -> None:
    rgb = PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG")
    good = _pil_png(rgb)
    cases = {
        b"": "empty",
        jpeg.getvalue(): "signature",
        good[: len(good) // 2]: "corrupt or truncated",
        _pil_png(rgb.convert("P")): "mode 'P'",
        _pil_png(PILImage.fromarray(np.zeros((4, 4), dtype=np.uint16) + 300, "I;16")): "mode",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidUpload, match=message):
            decode_png(data)


def test_put_image_is_content_addressed(
    db_session: Session, store: ObjectStore, rng: np.random.Generator
) -> None:
    png = encode_png(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    sha = hashlib.sha256(png).hexdigest()
    first = service.put_image(session=db_session, store=store, png=png, category="faces")
    second = service.put_image(session=db_session, store=store, png=png, kind="perturbed")
    assert first is second and first.sha256 == sha and first.kind == "clean"
    assert (first.width, first.height, first.n_bytes) == (8, 8, len(png))
    assert store.get(image_key(sha)) == png
    assert service.get_by_hash(session=db_session, sha256=sha.upper()) is first
    assert np.array_equal(service.load_pixels(store=store, image=first), decode_png(png))
    with pytest.raises(NotFound):
        service.get_by_hash(session=db_session, sha256="1" * 64)
    # A store that lost the object is healed by the next put of the same bytes.
    store.delete(image_key(sha))
    service.put_image(session=db_session, store=store, png=png)
    assert store.exists(image_key(sha))


def test_no_row_without_an_object(db_session: Session, tmp_path: Path, rng: np.random.Generator) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store should be")
    broken = LocalStore(blocker)
    png = encode_png(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    with pytest.raises(StoreError):
        service.put_image(session=db_session, store=broken, png=png)
    count = db_session.scalar(
        select(func.count()).select_from(Image).where(Image.sha256 == hashlib.sha256(png).hexdigest())
    )
    assert count == 0
    with pytest.raises(InvalidUpload):
        service.put_image(session=db_session, store=broken, png=b"\x89PNG\r\n\x1a\nnonsense")


def _files(rng: np.random.Generator, names: list[str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        (
            "files",
            (
                name,
                _pil_png(PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))),
                "image/png",
            ),
        )
        for name in names
    ]


def test_image_set_upload(client, auth, rng: np.random.Generator, store: ObjectStore) -> None:  # type: ignore[no-untyped-def]
    name = f"clean-{uuid.uuid4().hex[:8]}"
    files = _files(rng, ["a.png", "b.png", "c.png"])
    data = {"name": name, "categories": json.dumps(["face", "car", None]), "description": "day 0"}
    assert client.post(f"{API}/image-sets", data=data, files=files).status_code == 401
    assert client.post(f"{API}/image-sets", data=data, files=files, headers=auth("viewer")).status_code == 403
    r = client.post(f"{API}/image-sets", data=data, files=files, headers=auth("experimenter"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["n_images"] == 3 and not body["is_reference"]
    assert [im["category"] for im in body["images"]] == ["face", "car", None]
    assert [im["source_name"] for im in body["images"]] == ["a.png", "b.png", "c.png"]
    for im in body["images"]:
        stored = store.get(image_key(im["sha256"]))
        assert hashlib.sha256(stored).hexdigest() == im["sha256"] and im["bytes"] == len(stored)
    assert (
        client.post(f"{API}/image-sets", data=data, files=files, headers=auth("experimenter")).status_code
        == 409
    )
    got = client.get(f"{API}/image-sets/{name}", headers=auth("viewer"))
    assert got.status_code == 200
    assert {**got.json(), "created_at": None} == {**body, "created_at": None}  # SQLite drops the zone
    listed = client.get(f"{API}/image-sets", params={"limit": 1000}, headers=auth("viewer")).json()
    assert name in [s["name"] for s in listed["items"]]
    assert client.get(f"{API}/image-sets/nope", headers=auth("viewer")).status_code == 404
    assert client.get(f"{API}/image-sets", headers=auth("rig")).status_code == 403


def test_reference_set_with_name_convention(client, auth, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    name = f"ref-{uuid.uuid4().hex[:8]}"
    files = _files(rng, ["dog__001.png", "chair__x.png", "plain.png"])
    r = client.post(
        f"{API}/image-sets",
        data={"name": name, "is_reference": "true"},
        files=files,
        headers=auth("experimenter"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["is_reference"] is True
    assert [im["category"] for im in r.json()["images"]] == ["dog", "chair", None]
    assert {im["kind"] for im in r.json()["images"]} == {"reference"}
    refs = client.get(
        f"{API}/image-sets", params={"is_reference": True, "limit": 1000}, headers=auth("viewer")
    )
    assert name in [s["name"] for s in refs.json()["items"]]


def test_image_set_rejects_bad_files(client, auth, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    name = f"bad-{uuid.uuid4().hex[:8]}"
    files = _files(rng, ["ok.png"]) + [("files", ("notes.txt", b"hello", "text/plain"))]
    r = client.post(f"{API}/image-sets", data={"name": name}, files=files, headers=auth("experimenter"))
    assert r.status_code == 422 and "file 1" in r.json()["detail"] and "notes.txt" in r.json()["detail"]
    assert client.get(f"{API}/image-sets/{name}", headers=auth("viewer")).status_code == 404
    bad_cats = {"name": name, "categories": json.dumps(["only-one"])}
    r = client.post(
        f"{API}/image-sets",
        data=bad_cats,
        files=_files(rng, ["a.png", "b.png"]),
        headers=auth("experimenter"),
    )
    assert r.status_code == 422 and "categories" in r.json()["detail"]


def test_image_set_upload_of_too_many_files_says_so(client, auth) -> None:  # type: ignore[no-untyped-def]
    """Past the parser's 1,000 files per upload: a 400 naming the limit, and no set half made."""
    name = f"big-{uuid.uuid4().hex[:8]}"
    png = encode_png(np.zeros((3, 8, 8), dtype=np.uint8))
    files = [("files", (f"f{i}.png", png, "image/png")) for i in range(1001)]
    r = client.post(f"{API}/image-sets", data={"name": name}, files=files, headers=auth("experimenter"))
    assert r.status_code == 400 and "1000" in r.json()["detail"]
    assert client.get(f"{API}/image-sets/{name}", headers=auth("viewer")).status_code == 404


def test_lineage(client, auth, db_session: Session, store: ObjectStore, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    lab.create_subject(session=db_session, name=f"m-{tag}")
    array = lab.create_array(session=db_session, subject=f"m-{tag}", name="A")
    site = lab.register_sites(
        session=db_session, sites=[{"site_id": f"s-{tag}", "array": "A", "subject": f"m-{tag}"}]
    )[0][0]
    mv = ModelVersion(version=f"mv-{tag}", backbone="tiny", layer="l3", artifact_key="k")
    db_session.add(mv)
    db_session.flush()
    assert array.id == site.array_id
    clean_px = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    clean = service.put_pixels(session=db_session, store=store, pixels=clean_px, category="face")
    child = service.put_pixels(
        session=db_session,
        store=store,
        pixels=np.clip(clean_px.astype(int) + 3, 0, 255).astype(np.uint8),
        kind="perturbed",
        category="face",
        parent_id=clean.id,
        model_version_id=mv.id,
        site_pk=site.id,
        epsilon=1.0,
        direction="up",
        seed=7,
        predicted_change=0.4,
        achieved_l2=0.98,
        provenance={"restarts": 100},
    )
    db_session.commit()
    url = f"{API}/images/{child.sha256}/lineage"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("rig")).status_code == 403
    body = client.get(url, headers=auth("viewer")).json()
    assert body["sha256"] == child.sha256 and body["parent_sha256"] == clean.sha256
    assert (body["model_version"], body["site_id"], body["epsilon"], body["direction"]) == (
        mv.version,
        f"s-{tag}",
        1.0,
        "up",
    )
    assert (body["seed"], body["predicted_change"], body["achieved_l2"]) == (7, 0.4, 0.98)
    assert (
        body["kind"] == "perturbed" and body["category"] == "face" and body["provenance"] == {"restarts": 100}
    )
    root = client.get(f"{API}/images/{clean.sha256}/lineage", headers=auth("experimenter")).json()
    assert root["parent_sha256"] is None and root["kind"] == "clean"
    assert client.get(f"{API}/images/{'2' * 64}/lineage", headers=auth("viewer")).status_code == 404
    assert client.get(f"{API}/images/xyz/lineage", headers=auth("viewer")).status_code == 422


def _sized_files(
    rng: np.random.Generator, sizes: list[tuple[int, int]]
) -> list[tuple[str, tuple[str, bytes, str]]]:
    """One PNG per (width, height), named ``img<i>.png``."""
    return [
        (
            "files",
            (
                f"img{i}.png",
                _pil_png(PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))),
                "image/png",
            ),
        )
        for i, (w, h) in enumerate(sizes)
    ]


def _counts(db_session: Session) -> tuple[int, int]:
    from server.images.tables import ImageSet

    return (
        db_session.scalar(select(func.count()).select_from(ImageSet)) or 0,
        db_session.scalar(select(func.count()).select_from(Image)) or 0,
    )


def test_image_sets_keep_one_size(client, auth, rng: np.random.Generator, db_session: Session) -> None:  # type: ignore[no-untyped-def]
    """The first set fixes the lab's size; a set of another size is a 422 that names it, storing nothing."""
    headers = auth("experimenter")
    # One upload whose files differ: refused, naming the odd file and the size it should have.
    mixed = client.post(
        f"{API}/image-sets",
        data={"name": f"mixed-{uuid.uuid4().hex[:6]}"},
        files=_sized_files(rng, [(16, 16), (16, 16), (12, 16)]),
        headers=headers,
    )
    assert mixed.status_code == 422
    assert "file 2 ('img2.png') is 12x16" in mixed.json()["detail"] and "16x16" in mixed.json()["detail"]
    first = f"first-{uuid.uuid4().hex[:6]}"
    r = client.post(
        f"{API}/image-sets", data={"name": first}, files=_sized_files(rng, [(16, 16)] * 3), headers=headers
    )
    assert r.status_code == 201, r.text
    before = _counts(db_session)
    for is_reference in (False, True):
        odd = client.post(
            f"{API}/image-sets",
            data={"name": f"odd-{uuid.uuid4().hex[:6]}", "is_reference": str(is_reference).lower()},
            files=_sized_files(rng, [(12, 12), (12, 12)]),
            headers=headers,
        )
        assert odd.status_code == 422, odd.text
        body = odd.json()
        assert "is 12x12 pixels (and 1 more files); expected 16x16" in body["detail"]
        assert (body["expected_width"], body["expected_height"]) == (16, 16)
    assert _counts(db_session) == before  # nothing half-written
    same = client.post(
        f"{API}/image-sets",
        data={"name": f"same-{uuid.uuid4().hex[:6]}", "is_reference": "true"},
        files=_sized_files(rng, [(16, 16)] * 2),
        headers=headers,
    )
    assert same.status_code == 201, same.text


def test_withdrawn_set_leaves_the_pool_and_frees_the_size(  # type: ignore[no-untyped-def]
    client, auth, rng: np.random.Generator, db_session: Session
) -> None:
    from server.images.service import clean_pool

    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    headers = auth("experimenter")
    r = client.post(
        f"{API}/image-sets", data={"name": old}, files=_sized_files(rng, [(16, 16)] * 2), headers=headers
    )
    old_shas = {im["sha256"] for im in r.json()["images"]}
    assert {im.sha256 for im in clean_pool(db_session)[0]} >= old_shas

    url = f"{API}/image-sets/{old}/withdraw"
    assert client.post(url, json={"reason": "wrong size"}).status_code == 401
    assert client.post(url, json={"reason": "wrong size"}, headers=auth("viewer")).status_code == 403
    assert client.post(f"{API}/image-sets/nope/withdraw", headers=headers).status_code == 404
    r = client.post(url, json={"reason": "wrong size"}, headers=headers)
    assert r.status_code == 200, r.text
    withdrawn_at = r.json()["withdrawn_at"]
    assert withdrawn_at and r.json()["withdrawn_reason"] == "wrong size"
    again = client.post(url, json={"reason": "other"}, headers=auth("admin")).json()
    assert (again["withdrawn_at"], again["withdrawn_reason"]) == (withdrawn_at, "wrong size")  # idempotent
    listed = client.get(f"{API}/image-sets/{old}", headers=auth("viewer")).json()
    assert listed["withdrawn_at"] == withdrawn_at and len(listed["images"]) == 2  # kept for the record

    # Later nights no longer draw from it, and another size may now be established.
    assert not {im.sha256 for im in clean_pool(db_session)[0]} & old_shas
    r = client.post(
        f"{API}/image-sets", data={"name": new}, files=_sized_files(rng, [(12, 12)] * 2), headers=headers
    )
    assert r.status_code == 201, r.text
    assert service.established_size(session=db_session) == (12, 12)


def test_concurrent_first_sets_of_two_sizes_establish_one(fresh_db_url: str, tmp_path: Path) -> None:
    """Uploads racing to be the lab's first set cannot establish two sizes (a lock, not check-then-act)."""
    import threading

    import httpx

    from demo.server import BackgroundServer
    from server.auth import service as auth_service
    from server.db.engine import session_scope
    from tests.conftest import make_settings

    with session_scope(fresh_db_url) as db:
        user = auth_service.create_user(session=db, name="racer", role="experimenter")
        token = auth_service.create_token(session=db, user=user)
    rng = np.random.default_rng(3)
    sizes = [(16, 16), (12, 12)] * 3
    bodies = [_sized_files(rng, [size] * 4) for size in sizes]
    barrier = threading.Barrier(len(sizes))
    results: list[tuple[tuple[int, int], int]] = []

    def upload(i: int, base: str) -> None:
        with httpx.Client(base_url=base + API, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            barrier.wait()
            r = c.post("/image-sets", data={"name": f"race-{i}"}, files=bodies[i])
            results.append((sizes[i], r.status_code))

    with BackgroundServer(make_settings(fresh_db_url, tmp_path)) as server:
        threads = [threading.Thread(target=upload, args=(i, server.url)) for i in range(len(sizes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    accepted = {size for size, code in results if code == 201}
    assert len(results) == len(sizes) and {code for _, code in results} == {201, 422}, results
    assert len(accepted) == 1, results  # one size won; every upload of the other got its 422
    with session_scope(fresh_db_url) as db:
        stored = set(db.execute(select(Image.width, Image.height)).all())
    assert stored == accepted
