"""A virtual rig: pulls the day's batch over REST, "shows" it to a simulated brain, posts events,
and uploads the session's spikes as an NWB file through the experimenter API.

It uses only the public API (the rig client and plain HTTP), so its uploads pass through
exactly the validation any client's do.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image as PILImage

from models.simulator import Brain, mark_fixation_breaks
from rigclient import RigClient
from rigclient.models import Manifest, PresentationEvent

log = logging.getLogger(__name__)


@dataclass
class DayRun:
    session_id: str
    batch_id: str
    presentations: int
    spikes: int
    upload: dict[str, Any]
    manifest: Manifest


def write_nwb(
    path: Path,
    *,
    session_id: str,
    site_ids: list[str],
    spikes: list[np.ndarray],
    onsets: np.ndarray,
    on_s: float,
    shas: list[str],
    event_ids: list[str],
    fixation_ok: np.ndarray,
    subject: str | None = None,
) -> Path:
    """The upload contract's NWB layout: a subject, units with ``site_id`` tied to their electrodes,
    a ``presentations`` TimeIntervals; with the metadata DANDI asks for (docs/nwb-and-brainscore.md)."""
    import uuid

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    nwb = NWBFile(
        session_description=f"itloop virtual rig session {session_id}",
        identifier=str(uuid.uuid4()),
        session_id=session_id,
        session_start_time=datetime.now(UTC),
        experimenter=["Rig, Virtual"],
        institution="itloop demo",
        lab="virtual lab",
        keywords=["inferior temporal cortex", "adversarial sensitivity", "simulation"],
        subject=Subject(
            subject_id=subject,
            species="Macaca mulatta",
            sex="M",
            age="P7Y",
            description="a simulated IT population (models/simulator)",
        ),
    )
    device = nwb.create_device(
        name="virtual-array", description="simulated chronic array", manufacturer="itloop simulator"
    )
    group = nwb.create_electrode_group(name="A", description="array A", location="IT", device=device)
    nwb.add_electrode_column(name="site_id", description="the lab's stable site id")
    for sid in site_ids:
        nwb.add_electrode(group=group, location="IT", site_id=sid)
    nwb.units = Units(name="units", description="one site per unit", resolution=1 / 30000)
    nwb.add_unit_column(name="site_id", description="the lab's stable site id")
    for k, (sid, times) in enumerate(zip(site_ids, spikes, strict=True)):
        nwb.add_unit(spike_times=times, site_id=sid, electrodes=[k])
    table = TimeIntervals(name="presentations", description="RSVP presentations")
    for col, desc in (
        ("image_sha256", "SHA-256 of the PNG shown"),
        ("event_id", "rig event id"),
        ("fixation_ok", "fixation held"),
    ):
        table.add_column(name=col, description=desc)
    for t, sha, ev, ok in zip(onsets, shas, event_ids, fixation_ok, strict=True):
        table.add_row(
            start_time=float(t),
            stop_time=float(t) + on_s,
            image_sha256=sha,
            event_id=ev,
            fixation_ok=bool(ok),
        )
    nwb.add_time_intervals(table)
    with NWBHDF5IO(str(path), "w") as io_:
        io_.write(nwb)
    return path


class VirtualRig:
    """One rig and the monkey in front of it."""

    def __init__(
        self,
        *,
        base_url: str,
        rig_token: str,
        experimenter_token: str,
        rig_id: str,
        subject: str,
        brain: Brain,
        site_ids: list[str],
        cache_dir: Path,
        fixation_break_rate: float = 0.03,
        trial_gap_s: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.rig = RigClient(base_url, rig_token, cache_dir, rig_id=rig_id)
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {experimenter_token}"},
            timeout=300,
        )
        self.rig_id, self.subject, self.brain, self.site_ids = rig_id, subject, brain, site_ids
        self.fixation_break_rate, self.trial_gap_s = fixation_break_rate, trial_gap_s
        self.rng = np.random.default_rng(seed)

    def close(self) -> None:
        self.rig.close()
        self.http.close()

    def _pixels(self, sha: str) -> np.ndarray:
        with PILImage.open(self.rig.image_path(sha)) as im:
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1)

    def run_day(self, *, session_id: str, day: int) -> DayRun:
        manifest = self.rig.next_batch()
        if manifest is None:
            raise RuntimeError(f"no published batch for rig {self.rig_id}")
        self.rig.fetch_images(manifest)  # cached by hash and verified
        seq = sorted(manifest.sequence, key=lambda s: s.seq)
        # Session clock: one slot per presentation, a short gap between RSVP trials.
        onsets, t, last_trial = [], 1.0, None
        for s in seq:
            if last_trial is not None and s.trial != last_trial:
                t += self.trial_gap_s
            onsets.append(t)
            t += (s.on_ms + s.off_ms) / 1000.0
            last_trial = s.trial
        onset = np.asarray(onsets)
        fixation = mark_fixation_breaks(len(seq), self.rng, rate=self.fixation_break_rate, mean_run=2.0)
        shas = [s.image_sha256 for s in seq]
        event_ids = [f"{manifest.batch_id}:{s.seq}" for s in seq]
        self.rig.post_events(
            manifest.batch_id,
            [
                PresentationEvent(
                    event_id=e, seq=s.seq, image_sha256=s.image_sha256, onset_s=float(o), fixation_ok=bool(f)
                )
                for e, s, o, f in zip(event_ids, seq, onset, fixation, strict=True)
            ],
            ndjson=True,
        )
        unique = sorted(set(shas))
        pix = {sha: self._pixels(sha) for sha in unique}
        images = np.stack([pix[sha] for sha in shas])
        spikes = self.brain.simulate_spikes(
            images, onset, self.rng, fixation_ok=fixation, duration_s=seq[0].on_ms / 1000.0
        )
        trains = spikes.per_site(len(self.site_ids))
        r = self.http.post(
            "/sessions",
            json={
                "session_id": session_id,
                "subject": self.subject,
                "rig_id": self.rig_id,
                "batch_id": manifest.batch_id,
                "day": day,
            },
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(f"creating session {session_id}: {r.status_code} {r.text}")
        with tempfile.TemporaryDirectory() as tmp:
            path = write_nwb(
                Path(tmp) / f"{session_id}.nwb",
                session_id=session_id,
                site_ids=self.site_ids,
                spikes=trains,
                onsets=onset,
                on_s=seq[0].on_ms / 1000.0,
                shas=shas,
                event_ids=event_ids,
                fixation_ok=fixation,
                subject=self.subject,
            )
            data = path.read_bytes()
        r = self.http.post(
            f"/sessions/{session_id}/spikes",
            files={"file": (f"{session_id}.nwb", io.BytesIO(data), "application/x-nwb")},
        )
        if r.status_code != 200 and r.status_code != 201:
            raise RuntimeError(f"uploading spikes of {session_id}: {r.status_code} {r.text}")
        self.rig.complete(manifest.batch_id)
        return DayRun(session_id, manifest.batch_id, len(seq), int(len(spikes.time_s)), r.json(), manifest)
