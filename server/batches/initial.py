"""The day-0 batch: the clean and reference images, no perturbations (there is no model yet).

Pure bookkeeping on the lab's image sets and the batch service (no tensors), so it lives with
the batches rather than with the night's stages.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from itloop.errors import InvalidInput
from itloop.storage import ObjectStore
from models.rsvp_schedule import ScheduleConfig, schedule_rsvp
from server.batches.service import create_batch, publish
from server.batches.tables import Batch
from server.images.service import clean_pool
from server.images.tables import ImageKind


def initial_batch(
    session: Session,
    store: ObjectStore,
    *,
    rig_id: str,
    batch_id: str,
    repeats: int = 4,
    seed: int = 0,
    on_ms: int = 100,
    off_ms: int = 100,
    images_per_trial: int = 8,
    clean_images: int | None = None,
) -> Batch:
    """Day 0: every reference image and the clean images, no perturbations (there is no model yet).

    ``clean_images`` limits day 0 to the first that many clean images (in set order), for a lab
    whose clean sets hold more than one day can show; the nights' ``fresh_clean`` then brings
    in the rest, least seen first. ``None`` shows them all.
    """
    clean, reference = clean_pool(session)
    if clean_images is not None:
        clean = clean[:clean_images]
    if not clean and not reference:
        raise InvalidInput("register a clean image set before the first batch")
    roles: dict[int, str] = {im.id: ImageKind.reference for im in reference}
    for im in clean:
        roles.setdefault(im.id, ImageKind.clean)
    by_id = {im.id: im for im in [*clean, *reference]}
    sched = schedule_rsvp(
        [str(i) for i in roles],
        [],
        ScheduleConfig(
            repeats=repeats, on_ms=on_ms, off_ms=off_ms, images_per_trial=images_per_trial, seed=seed
        ),
    )
    batch = create_batch(
        session=session,
        rig_id=rig_id,
        batch_id=batch_id,
        day=0,
        model_version_id=None,
        images=[(by_id[i], r) for i, r in roles.items()],
        sequence=[
            {"seq": it.seq, "image_id": int(it.image), "trial": it.trial, "on_ms": on_ms, "off_ms": off_ms}
            for it in sched.items
        ],
        notes="initial batch: clean and reference images",
    )
    return publish(session=session, batch=batch, store=store)
