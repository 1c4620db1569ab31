"""What a rig may see of batches and do with them: published batches only, its own rig only.

A batch is invisible to rigs until published (building, failed and withdrawn batches are
NotFound to them), and a rig token acts only for the rig it is named after. The manifest,
event and completion routes all check here first.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from itloop.errors import Forbidden, NotFound
from server.auth.cache import Principal
from server.auth.tables import Role
from server.batches.tables import Batch, BatchState
from server.db.base import utcnow
from server.lab.service import get_rig
from server.lab.tables import Rig

VISIBLE = (BatchState.published,)


def get_published(*, session: Session, batch_id: str, with_manifest: bool = True) -> Batch:
    """A batch a rig may see; building, failed and withdrawn batches are NotFound to it.

    ``with_manifest=False`` leaves the (large) manifest column unloaded until touched.
    """
    query = select(Batch).where(Batch.batch_id == batch_id)
    if not with_manifest:
        query = query.options(defer(Batch.manifest))
    batch = session.scalar(query)
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    check_visible(batch_id, batch.state, batch.published_at)
    return batch


def check_visible(batch_id: str, state: str, published_at: datetime | None) -> None:
    """NotFound unless the batch is published: what a rig may see."""
    if state not in VISIBLE or published_at is None:
        raise NotFound(f"batch {batch_id!r} is not published (state {state})")


def authorize_rig(*, actor: Principal, rig_id: str, what: str = "") -> None:
    """A rig token acts only for its own rig: the rig whose ``rig_id`` is the token user's name.

    One rig account per rig (``itloop users create <rig_id> --role rig``), so a token taken
    from one stimulus PC cannot report presentations for, complete, or pull the batches of
    another. People's tokens (experimenter, admin) are not rig-bound; the route's role check
    decides what they may do.
    """
    if actor.role == Role.rig and actor.name != rig_id:
        raise Forbidden(
            f"this token belongs to rig account {actor.name!r} and acts only for rig {actor.name!r}, "
            f"not rig {rig_id!r}{what}; give each rig a user named after its rig_id"
        )


def rig_of(*, session: Session, batch: Batch) -> str:
    """The ``rig_id`` a batch was made for."""
    return session.scalar(select(Rig.rig_id).where(Rig.id == batch.rig_pk)) or ""


def next_for_rig(*, session: Session, rig_id: str, actor: Principal | None = None) -> Batch | None:
    """The rig's newest published batch, or None when there is none or the rig completed it.

    Only the newest counts: once a newer batch is published, older ones are superseded, so a
    rig that completed today's batch is not sent back to an unfinished older one. ``actor``
    (the caller) must be allowed to act for the rig (:func:`authorize_rig`).
    """
    rig = get_rig(session=session, rig_id=rig_id)
    if actor is not None:
        authorize_rig(actor=actor, rig_id=rig_id)
    newest = session.scalar(
        select(Batch)
        .where(Batch.rig_pk == rig.id, Batch.state.in_(VISIBLE))
        .order_by(Batch.published_at.desc(), Batch.id.desc())
        .limit(1)
        .options(defer(Batch.manifest))
    )
    if newest is None or newest.completed_at is not None:
        return None
    if newest.pulled_at is None and actor is not None and actor.role == "rig":
        # Only the first pull writes (one UPDATE per batch); people looking do not count.
        newest.pulled_at = utcnow()
        session.flush()
    return newest


def complete(*, session: Session, batch_id: str, actor: Principal | None = None) -> Batch:
    """Mark a published batch completed by its rig; repeating it keeps the first time.

    ``actor`` (the caller) must be allowed to act for the batch's rig (:func:`authorize_rig`).
    """
    batch = get_published(session=session, batch_id=batch_id, with_manifest=False)
    if actor is not None:
        authorize_rig(actor=actor, rig_id=rig_of(session=session, batch=batch), what=f" (batch {batch_id!r})")
    if batch.completed_at is None:
        batch.completed_at = utcnow()
        session.flush()
    return batch
