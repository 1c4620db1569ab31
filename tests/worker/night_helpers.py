"""A tiny simulated lab for end-to-end tests of the real nightly pipeline.

Everything goes through the real services (lab, images, batches, recordings; the lab and its
days are built by :mod:`tests.factories`) and the real night steps; only the monkey is
simulated (:class:`models.simulator.VirtualBrain`).
A "day" (the rig pulls the next batch and shows it, spikes are uploaded) is one call,
:func:`show_day`; a night run in this process is one call, :func:`run_night`.
Sizes are chosen so that a whole night takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from itloop.settings import Settings
from itloop.storage import get_store
from server.batches import service as batches
from server.batches.tables import Batch, BatchState
from server.db.engine import session_scope
from server.jobs import service as jobs
from server.jobs.tables import Job, Night
from server.lab import service as lab_service
from tests.factories import SimulatedLab, record_simulated_day, seed_simulated_lab

SIZE = 32
# Tiny nights: one model, two epsilons, one clean image per site, two shards of two sites.
TINY_NIGHT: dict[str, Any] = {
    "candidates": ["tiny_cnn"],
    "epsilons": [0.5, 1.0],
    "clean_per_site": 1,
    "targeted_epsilons": [],
    "random_per_site": 1,
    "restarts": 2,
    "budget": 8,
    "repeats": 3,
    "n_boot": 50,
    "model_sensitivity_images": 1,
    "model_sensitivity_budget": 8,
    "sites_per_shard": 2,
    "ceiling_threshold": -1.0,
    "pair_separation_s": 60,
}


@dataclass
class Lab(SimulatedLab):
    """The simulated lab (subject, sites, rig, brain; committed), the rng of its days, their sessions."""

    settings: Settings = field(kw_only=True)
    rng: np.random.Generator = field(kw_only=True)
    days: list[str] = field(default_factory=list)  # recording session ids, in day order

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url

    @contextmanager
    def session(self) -> Iterator[Any]:
        with session_scope(self.url) as session:
            jobs.bind(session, self.settings)
            yield session


def seed_lab(
    settings: Settings,
    *,
    n_sites: int = 4,
    n_clean: int = 12,
    n_reference: int = 6,
    repeats: int = 3,
    seed: int = 0,
) -> Lab:
    """Subject, array, sites, rig, a clean and a reference set, and the published day-0 batch.

    Same arguments give the same content (images, sites, batch order) in any fresh database,
    which is what the determinism test compares.
    """
    settings.ensure_dirs()
    store = get_store(settings.resolved_store_url)
    with session_scope(settings.resolved_database_url) as session:
        sim = seed_simulated_lab(
            session,
            store,
            name="n",
            n_sites=n_sites,
            n_clean=n_clean,
            n_reference=n_reference,
            repeats=repeats,
            size=SIZE,
            seed=seed,
        )
    return Lab(**vars(sim), settings=settings, rng=np.random.default_rng([seed, 1]))


def decode(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 array (3, H, W), as a rig would show it."""
    with PILImage.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


def show_day(lab: Lab, *, complete: bool = True) -> str:
    """One day: the rig pulls its next batch, the brain sees it, the spikes are ingested.

    Returns the recording session id. ``complete=False`` leaves the batch uncompleted (so
    ``next_for_rig`` still returns it) and the session open (no automatic night).
    """
    store = get_store(lab.settings.resolved_store_url)
    day = len(lab.days)
    session_id = f"{lab.subject}-day{day}-{uuid.uuid4().hex[:4]}"
    with session_scope(lab.url) as session:
        batch = batches.next_for_rig(session=session, rig_id=lab.rig_id)
        assert batch is not None, f"no published batch for {lab.rig_id} on day {day}"
        record_simulated_day(
            session, store, lab, batch_id=batch.batch_id, session_id=session_id, day=day, rng=lab.rng
        )
        if complete:
            batches.complete(session=session, batch_id=batch.batch_id)
    lab.days.append(session_id)
    return session_id


def start_night(lab: Lab, params: dict[str, Any] | None = None, session_id: str | None = None) -> int:
    """Submit the night of ``session_id`` (default: the last day); enqueued on commit."""
    from worker.night import start_night as start

    with lab.session() as session:
        return start(
            session,
            lab.settings,
            session_id=session_id or lab.days[-1],
            params={**TINY_NIGHT, **(params or {})},
        ).id


def run_night(lab: Lab, params: dict[str, Any] | None = None) -> int:
    """Start and run the last day's night in this process; returns its id (whatever its outcome)."""
    from jobs.queue import InProcessRunner, get_runner

    runner = get_runner(lab.settings, background=False)
    assert isinstance(runner, InProcessRunner)
    night_id = start_night(lab, params)
    runner.run_until_idle()
    return night_id


def night_row(lab: Lab, night_id: int) -> Night:
    with session_scope(lab.url) as session:
        night = session.get(Night, night_id)
        assert night is not None
        session.expunge(night)
        return night


def night_jobs(lab: Lab, night_id: int) -> list[Job]:
    with session_scope(lab.url) as session:
        rows = jobs.night_jobs(session, night_id)
        for r in rows:
            session.expunge(r)
        return rows


def batch_of_night(lab: Lab, night_id: int) -> Batch | None:
    with session_scope(lab.url) as session:
        night = session.get(Night, night_id)
        if night is None or night.batch_pk is None:
            return None
        batch = session.get(Batch, night.batch_pk)
        session.expunge(batch)
        return batch


def batches_of_rig(lab: Lab) -> list[tuple[str, str]]:
    """(batch_id, state) of every batch of the lab's rig, oldest first."""
    with session_scope(lab.url) as session:
        rig = lab_service.get_rig(session=session, rig_id=lab.rig_id)
        return [
            (b.batch_id, str(b.state))
            for b in session.scalars(select(Batch).where(Batch.rig_pk == rig.id).order_by(Batch.id))
        ]


def manifest_of(lab: Lab, batch_id: str) -> dict[str, Any]:
    with session_scope(lab.url) as session:
        return batches.get_manifest(session=session, batch_id=batch_id)


def content_signature(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(sorted image hashes, hash of each presentation in seq order): what a rig would show."""
    shas = sorted(im["sha256"] for im in manifest["images"])
    seq = [s["image_sha256"] for s in sorted(manifest["sequence"], key=lambda s: s["seq"])]
    return shas, seq


def api_tokens(settings: Settings, rig_id: str | None = None) -> dict[str, str]:
    """One committed user and token per role on the lab's database.

    With ``rig_id``, the rig token is that rig's own (a user named ``rig_id``, made if missing):
    a rig token acts only for the rig its user is named after.
    """
    from sqlalchemy import select

    from server.auth import service as auth
    from server.auth.tables import User

    out = {}
    with session_scope(settings.resolved_database_url) as session:
        for role in ("admin", "experimenter", "viewer", "rig"):
            name = rig_id if role == "rig" and rig_id else f"{role}-{uuid.uuid4().hex[:6]}"
            user = session.scalar(select(User).where(User.name == name)) or auth.create_user(
                session=session, name=name, role=role
            )
            out[role] = auth.create_token(session=session, user=user)
    return out


__all__ = [
    "TINY_NIGHT",
    "BatchState",
    "Lab",
    "api_tokens",
    "batch_of_night",
    "batches_of_rig",
    "content_signature",
    "decode",
    "manifest_of",
    "night_jobs",
    "night_row",
    "run_night",
    "seed_lab",
    "show_day",
    "start_night",
]
