"""Shared test-lab factories: the lab inventory, simulated image sets and simulated recording days.

Everything goes through the real services (``server.lab``, ``server.images``,
``server.recordings``) on a caller's session; the caller commits. Layers, smallest first:

* :func:`add_lab`: a subject, one array, its sites and a rig for the subject (the dashboard's
  hand-made lab, and the base of the others);
* :func:`seed_simulated_lab`: that, plus clean and reference image sets from
  :mod:`models.simulator`, the published day-0 batch and the :class:`VirtualBrain` in front of
  the rig (the worker tests' tiny lab: same arguments, same content in any fresh database);
* :func:`record_simulated_day`: the brain watches a published batch as the rig shows it
  (RSVP timing from the manifest) and its spikes are ingested into a new recording session;
* :class:`Lab`, :func:`seed_lab`, :func:`show_day`, :func:`run_night` and friends: the worker
  tests' tiny simulated lab running the real nightly pipeline (4 sites, 32x32 images, one tiny
  CNN; a whole night takes seconds on 2 CPU cores); and
* :func:`submit`, :func:`load`, :func:`wait_for`: one job in its own transaction, a job row, a
  condition polled with a deadline.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from itloop.storage import ObjectStore, get_store
from jobs import state as jobstate
from server.batches import service as batches
from server.batches.tables import Batch, BatchState
from server.db.engine import session_scope
from server.images import service as images
from server.images.png import encode_png
from server.jobs.tables import Job, Night
from server.lab import service as lab_service
from server.lab.tables import Array, Rig, Site, Subject
from server.recordings import service as recordings
from server.recordings.ingest.validate import ParsedUpload

CATEGORIES = ("animal", "face", "object", "scene")
TRIAL_GAP_S = 0.5  # pause between RSVP trials in a simulated day


@dataclass
class LabRows:
    """The rows :func:`add_lab` made (flushed, so they have ids)."""

    subject: Subject
    array: Array
    sites: list[Site]
    rig: Rig

    @property
    def site_ids(self) -> list[str]:
        return [s.site_id for s in self.sites]


def add_lab(
    session: Session,
    *,
    subject: str,
    site_ids: Sequence[str],
    rig_id: str,
    array: str = "A",
    subject_notes: str = "",
    hemisphere: str = "",
    electrodes: Sequence[str] | None = None,
    rig_name: str = "",
    screen: dict[str, Any] | None = None,
) -> LabRows:
    """A subject with one IT array of ``site_ids`` (electrode ``0, 1, ...`` unless given), and a rig."""
    electrodes = [str(i) for i in range(len(site_ids))] if electrodes is None else list(electrodes)
    assert len(electrodes) == len(site_ids)
    subject_row = lab_service.create_subject(session=session, name=subject, notes=subject_notes)
    array_row = lab_service.create_array(session=session, subject=subject, name=array, hemisphere=hemisphere)
    sites, _ = lab_service.register_sites(
        session=session,
        sites=[
            {"site_id": s, "array": array, "subject": subject, "electrode": e}
            for s, e in zip(site_ids, electrodes, strict=True)
        ],
    )
    rig = lab_service.create_rig(
        session=session, rig_id=rig_id, name=rig_name, subject=subject, screen=screen
    )
    return LabRows(subject_row, array_row, sites, rig)


def add_simulated_image_sets(
    session: Session, store: ObjectStore, *, n_clean: int, n_reference: int, size: int, seed: int
) -> None:
    """Image sets ``clean`` (categorised, from ``seed``) and ``reference`` from the simulator."""
    from models.simulator import make_clean_images, make_reference_images

    clean, cats = make_clean_images(n_clean, size=size, n_categories=len(CATEGORIES), seed=seed)
    ref, _ = make_reference_images(n_reference, size=size, n_categories=len(CATEGORIES))
    images.create_image_set(
        session=session,
        store=store,
        name="clean",
        files=[(f"c{i:03d}.png", encode_png(im)) for i, im in enumerate(clean)],
        categories=[CATEGORIES[int(c)] for c in cats],
    )
    images.create_image_set(
        session=session,
        store=store,
        name="reference",
        files=[(f"r{i:03d}.png", encode_png(im)) for i, im in enumerate(ref)],
        is_reference=True,
    )


@dataclass
class SimulatedLab:
    """A lab whose subject is a :class:`models.simulator.VirtualBrain`, with its day-0 batch."""

    subject: str
    rig_id: str
    site_ids: list[str]
    brain: Any  # models.simulator.VirtualBrain
    day0_batch_id: str


def seed_simulated_lab(
    session: Session,
    store: ObjectStore,
    *,
    name: str,
    n_sites: int,
    n_clean: int,
    n_reference: int,
    repeats: int,
    size: int = 32,
    seed: int = 0,
) -> SimulatedLab:
    """Subject ``monkey-<name>``, sites ``<name>-A-000...``, rig ``rig-<name>``, a clean and a
    reference set, the published day-0 batch, and the brain (same arguments, same content)."""
    from models.simulator import VirtualBrain
    from server.batches.initial import initial_batch

    subject, rig_id = f"monkey-{name}", f"rig-{name}"
    site_ids = [f"{name}-A-{i:03d}" for i in range(n_sites)]
    add_lab(session, subject=subject, site_ids=site_ids, rig_id=rig_id, rig_name="test rig")
    add_simulated_image_sets(session, store, n_clean=n_clean, n_reference=n_reference, size=size, seed=seed)
    batch = initial_batch(
        session, store, rig_id=rig_id, batch_id=f"{rig_id}-day0", repeats=repeats, seed=seed
    )
    brain = VirtualBrain(n_sites=n_sites, image_size=size, seed=seed)
    return SimulatedLab(subject, rig_id, site_ids, brain, batch.batch_id)


def rsvp_onsets(sequence: Sequence[dict[str, Any]]) -> np.ndarray:
    """Onset times (s) of a manifest's sequence in seq order: back to back, a pause between trials."""
    onsets, t, last = [], 1.0, None
    for item in sequence:
        if last is not None and item["trial"] != last:
            t += TRIAL_GAP_S
        onsets.append(t)
        t += (item["on_ms"] + item["off_ms"]) / 1000.0
        last = item["trial"]
    return np.asarray(onsets)


def record_simulated_day(
    session: Session,
    store: ObjectStore,
    lab: SimulatedLab,
    *,
    batch_id: str,
    session_id: str,
    day: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The brain watches published batch ``batch_id``; a recording session with its spikes is
    created and ingested (responses computed). Returns the ingest counts."""
    manifest = batches.get_manifest(session=session, batch_id=batch_id)
    pixels = {
        im["sha256"]: images.load_pixels(
            store=store, image=images.get_by_hash(session=session, sha256=im["sha256"])
        )
        for im in manifest["images"]
    }
    seq = sorted(manifest["sequence"], key=lambda s: s["seq"])
    onset = rsvp_onsets(seq)
    shas = [s["image_sha256"] for s in seq]
    on_s = seq[0]["on_ms"] / 1000.0
    spikes = lab.brain.simulate_spikes(np.stack([pixels[s] for s in shas]), onset, rng, duration_s=on_s)
    rec, _ = recordings.create_session(
        session=session,
        session_id=session_id,
        subject=lab.subject,
        rig_id=lab.rig_id,
        batch_id=batch_id,
        day=day,
    )
    upload = ParsedUpload(
        site_labels=list(lab.site_ids),
        spike_site=spikes.site_index.astype(np.int64),
        spike_times=spikes.time_s,
        event_ids=[f"{batch_id}:{s['seq']}" for s in seq],
        image_sha256=shas,
        onset_s=onset,
        stop_s=onset + on_s,
        fixation_ok=np.ones(len(seq), dtype=bool),
        source="test",
    )
    out = recordings.ingest(session=session, recording=rec, upload=upload)
    assert out["responses"] > 0, out
    return out


# --- the worker tests' tiny lab (real nightly pipeline) ---------------------------------

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
            jobstate.bind(session, self.settings)
            yield session


def seed_lab(
    settings: Settings,
    *,
    name: str = "n",
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
            name=name,
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
        rows = jobstate.night_jobs(session, night_id)
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


# --- jobs ----------------------------------------------------------------------------------


def submit(settings: Settings, kind: str, params: dict[str, Any] | None = None, **kw: Any) -> int:
    """Submit one job in its own transaction (enqueued on commit); returns its id."""
    with session_scope(settings.resolved_database_url) as session:
        jobstate.bind(session, settings)
        return jobstate.submit(session, kind, params, settings=settings, **kw).id


def load(settings: Settings, job_id: int) -> Job:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
