"""Batch service: building batches are invisible, publication freezes the manifest atomically."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import Conflict, InvalidInput, NotFound
from itloop.settings import Settings
from itloop.storage import ObjectStore, get_store, image_key
from server.batches import manifest as manifests
from server.batches import service
from server.batches.tables import Batch, BatchImage, BatchState, SequenceItem
from server.images.png import encode_png
from server.images.service import put_image
from server.images.tables import Image
from server.lab import service as lab
from server.modeling.tables import ModelVersion

# ---- factories shared by the rig API and rig client tests -------------------------------------


def uid() -> str:
    """Unique names keep tests independent even where a backend keeps committed rows."""
    return uuid.uuid4().hex[:8]


def make_rig(session: Session, rig_id: str | None = None) -> str:
    rig_id = rig_id or f"rig-{uid()}"
    lab.create_subject(session=session, name="monkey-a")
    lab.create_rig(session=session, rig_id=rig_id, name="Rig one", subject="monkey-a")
    return rig_id


def make_images(
    session: Session, store: ObjectStore, n: int, seed: int | None = None, size: int = 8
) -> list[Image]:
    rng = np.random.default_rng(seed)  # unseeded by default: fresh pixels, so fresh hashes, per test
    return [
        put_image(
            session=session,
            store=store,
            png=encode_png(rng.integers(0, 256, (3, size, size), dtype=np.uint8)),
            category=f"cat{i % 3}",
        )
        for i in range(n)
    ]


def make_batch(
    session: Session,
    store: ObjectStore,
    *,
    rig_id: str,
    batch_id: str | None = None,
    n_images: int = 4,
    repeats: int = 2,
    publish: bool = True,
    model_version_id: int | None = None,
) -> Batch:
    """A batch of ``n_images`` random images, each shown ``repeats`` times."""
    images = make_images(session, store, n_images)
    sequence = [
        {"seq": k, "image_id": images[k % n_images].id, "trial": k // 4, "on_ms": 100, "off_ms": 100}
        for k in range(n_images * repeats)
    ]
    batch = service.create_batch(
        session=session,
        rig_id=rig_id,
        batch_id=batch_id or f"{rig_id}-day-{uid()}",
        day=1,
        model_version_id=model_version_id,
        images=[(im, "clean") for im in images],
        sequence=sequence,
        notes="test batch",
    )
    if publish:
        service.publish(session=session, batch=batch, store=store)
    return batch


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return get_store(settings.resolved_store_url)


# ---- tests -------------------------------------------------------------------------------------


def test_building_batch_is_invisible_until_published(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig, publish=False)
    assert batch.state == BatchState.building and batch.manifest is None
    assert service.next_for_rig(session=db_session, rig_id=rig) is None
    with pytest.raises(NotFound, match="not published"):
        service.get_manifest(session=db_session, batch_id=batch.batch_id)
    service.publish(session=db_session, batch=batch, store=store)
    assert batch.state == BatchState.published and batch.published_at is not None
    assert service.next_for_rig(session=db_session, rig_id=rig) is batch
    manifest = service.get_manifest(session=db_session, batch_id=batch.batch_id)
    assert manifest["rig_id"] == rig and len(manifest["images"]) == 4 and len(manifest["sequence"]) == 8
    assert manifest["sequence"][0]["seq"] == 0 and manifest["day"] == 1


def test_manifest_is_frozen_at_publication(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    mv = ModelVersion(version=f"mv-{uid()}", backbone="tiny", layer="l3", artifact_key="models/mv-1.pt")
    db_session.add(mv)
    db_session.flush()
    batch = make_batch(db_session, store, rig_id=rig, model_version_id=mv.id)
    before = service.get_manifest(session=db_session, batch_id=batch.batch_id)
    assert before["model_version"] == mv.version
    # Changing the rows behind a published batch does not change what rigs receive.
    extra = make_images(db_session, store, 1)[0]
    db_session.add(BatchImage(batch_pk=batch.id, image_id=extra.id, role="clean"))
    item = db_session.scalar(
        select(SequenceItem).where(SequenceItem.batch_pk == batch.id, SequenceItem.seq == 0)
    )
    assert item is not None
    item.on_ms = 999
    db_session.flush()
    assert service.get_manifest(session=db_session, batch_id=batch.batch_id) == before
    with pytest.raises(Conflict, match="only a building batch"):
        service.publish(session=db_session, batch=batch, store=store)


def test_publish_refuses_missing_objects(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig, publish=False)
    sha = db_session.scalar(
        select(Image.sha256)
        .join(BatchImage, BatchImage.image_id == Image.id)
        .where(BatchImage.batch_pk == batch.id)
    )
    assert sha is not None
    store.delete(image_key(sha))
    with pytest.raises(NotFound, match="missing from the store"):
        service.publish(session=db_session, batch=batch, store=store)
    assert batch.state == BatchState.building and batch.manifest is None


def test_next_is_the_newest_published_batch_until_completed(db_session: Session, store: ObjectStore) -> None:
    rig, other = make_rig(db_session), make_rig(db_session)
    old = make_batch(db_session, store, rig_id=rig)
    new = make_batch(db_session, store, rig_id=rig)
    make_batch(db_session, store, rig_id=other)
    make_batch(db_session, store, rig_id=rig, publish=False)
    assert service.next_for_rig(session=db_session, rig_id=rig) is new
    service.complete(session=db_session, batch_id=new.batch_id)
    # The older batch was never completed, but a newer one supersedes it: nothing to show.
    assert service.next_for_rig(session=db_session, rig_id=rig) is None
    first = service.complete(session=db_session, batch_id=old.batch_id).completed_at
    assert service.complete(session=db_session, batch_id=old.batch_id).completed_at == first  # idempotent
    assert service.next_for_rig(session=db_session, rig_id=rig) is None
    assert service.next_for_rig(session=db_session, rig_id=other) is not None
    with pytest.raises(NotFound):
        service.next_for_rig(session=db_session, rig_id="no-such-rig")


def test_withdrawn_batch_is_invisible(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig)
    service.withdraw(session=db_session, batch=batch, reason="bad night")
    assert service.next_for_rig(session=db_session, rig_id=rig) is None
    with pytest.raises(NotFound):
        service.get_manifest(session=db_session, batch_id=batch.batch_id)


def test_published_manifest_is_rendered_once_and_withdrawal_still_applies(
    db_session: Session, store: ObjectStore
) -> None:
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig)
    manifests._manifest_cache.clear()
    body, etag = service.published_manifest_json(session=db_session, batch_id=batch.batch_id)
    assert len(manifests._manifest_cache) == 1
    again = service.published_manifest_json(session=db_session, batch_id=batch.batch_id)
    assert again == (body, etag) and len(manifests._manifest_cache) == 1  # a hit, on both backends
    assert service.manifest_json(batch=batch) == (body, etag)  # ORM and core paths share the key
    assert len(manifests._manifest_cache) == 1
    service.withdraw(session=db_session, batch=batch, reason="bad night")
    with pytest.raises(NotFound, match="not published"):
        service.published_manifest_json(session=db_session, batch_id=batch.batch_id)
    with pytest.raises(NotFound, match="no batch"):
        service.published_manifest_json(session=db_session, batch_id="no-such-batch")


def test_create_batch_validates(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    images = make_images(db_session, store, 2)
    stranger = make_images(db_session, store, 1)[0]
    bid = f"b-{uid()}"
    kwargs = dict(session=db_session, rig_id=rig, day=0, model_version_id=None)
    both = [(im, "clean") for im in images]
    good = {"seq": 0, "image_id": images[0].id, "trial": 0, "on_ms": 100, "off_ms": 100}
    with pytest.raises(InvalidInput, match="not one of the batch's images"):
        service.create_batch(
            batch_id=bid, images=both, sequence=[{**good, "image_id": stranger.id}], **kwargs
        )
    with pytest.raises(InvalidInput, match="appears twice"):
        service.create_batch(batch_id=bid, images=both, sequence=[good, good], **kwargs)
    with pytest.raises(InvalidInput, match="on_ms"):
        service.create_batch(batch_id=bid, images=both, sequence=[{**good, "on_ms": 0}], **kwargs)
    with pytest.raises(InvalidInput, match="unknown role"):
        service.create_batch(batch_id=bid, images=[(images[0], "weird")], sequence=[good], **kwargs)
    with pytest.raises(NotFound, match="rig"):
        service.create_batch(**{**kwargs, "rig_id": "nope"}, batch_id=bid, images=both, sequence=[])
    service.create_batch(batch_id=bid, images=both, sequence=[good], **kwargs)
    with pytest.raises(Conflict, match="already exists"):
        service.create_batch(batch_id=bid, images=both, sequence=[good], **kwargs)


def test_list_batches_filters(db_session: Session, store: ObjectStore) -> None:
    rig, other = make_rig(db_session), make_rig(db_session)
    a = make_batch(db_session, store, rig_id=rig)
    b = make_batch(db_session, store, rig_id=rig, publish=False)
    make_batch(db_session, store, rig_id=other)
    rows, total = service.list_batches(session=db_session, rig_id=rig)
    assert total == 2 and [r["batch"].batch_id for r in rows] == [b.batch_id, a.batch_id]  # newest first
    rows, total = service.list_batches(session=db_session, rig_id=rig, state="published")
    assert total == 1 and rows[0]["batch"] is a and rows[0]["rig_id"] == rig
    assert rows[0]["n_images"] == 4 and rows[0]["n_sequence"] == 8
    rows, total = service.list_batches(session=db_session, rig_id=rig, limit=1, offset=1)
    assert total == 2 and len(rows) == 1 and rows[0]["batch"] is a


def test_record_presentations_is_idempotent(db_session: Session, store: ObjectStore) -> None:
    rig = make_rig(db_session)
    batch = make_batch(db_session, store, rig_id=rig)
    bid = batch.batch_id
    seq = batch.manifest["sequence"]  # type: ignore[index]
    events = [
        {
            "event_id": f"{bid}:{s['seq']}",
            "seq": s["seq"],
            "image_sha256": s["image_sha256"],
            "onset_s": 0.2 * s["seq"],
        }
        for s in seq[:5]
    ]
    result = service.record_presentations(session=db_session, batch_id=bid, events=events)
    assert result == {"received": 5, "new": 5, "repeated": 0}
    # Three already stored, one new event sent twice in the same request.
    again = (
        events[3:]
        + [{"event_id": f"{bid}:5", "seq": 5, "image_sha256": seq[5]["image_sha256"], "onset_s": 1.0}] * 2
    )
    result = service.record_presentations(session=db_session, batch_id=bid, events=again)
    assert result == {"received": 4, "new": 1, "repeated": 3}
    assert service.count_events(session=db_session, batch=batch) == 6
    bad = [{**events[0], "event_id": "x", "image_sha256": "e" * 64}]
    with pytest.raises(InvalidInput, match="item 5: image_sha256"):
        service.record_presentations(session=db_session, batch_id=bid, events=events + bad)
    assert service.count_events(session=db_session, batch=batch) == 6
