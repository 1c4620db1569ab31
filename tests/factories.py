"""Shared test-lab factories: the lab inventory, simulated image sets and simulated recording days.

Everything goes through the real services (``server.lab``, ``server.images``,
``server.recordings``) on a caller's session; the caller commits. Layers, smallest first:

* :func:`add_lab`: a subject, one array, its sites and a rig for the subject (the dashboard's
  hand-made lab, and the base of the others);
* :func:`seed_simulated_lab`: that, plus clean and reference image sets from
  :mod:`models.simulator`, the published day-0 batch and the :class:`VirtualBrain` in front of
  the rig (the worker tests' tiny lab: same arguments, same content in any fresh database);
* :func:`record_simulated_day`: the brain watches a published batch as the rig shows it
  (RSVP timing from the manifest) and its spikes are ingested into a new recording session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from itloop.storage import ObjectStore
from server.batches import service as batches
from server.images import service as images
from server.images.png import encode_png
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
