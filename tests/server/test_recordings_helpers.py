"""Factories for recording tests: a lab inventory, synthetic sessions, and NWB/CSV/Parquet writers.

(Holds no tests itself; the name keeps it among the recording test files.)
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.images.tables import Image
from server.lab.tables import Array, Site, Subject
from server.recordings.tables import Presentation, RecordingSession, Response, SpikeTrain


@dataclass
class Lab:
    subject: str
    site_ids: list[str]
    images: list[str]
    image_pks: list[int]
    site_pks: list[int]
    sid: str = "sess-1"


def make_lab(db: Session, n_sites: int = 6, n_images: int = 10, subject: str | None = None) -> Lab:
    """Unique names per call: on SQLite the test transaction may not isolate every commit."""
    subject = subject or f"monkey-{uuid.uuid4().hex[:8]}"
    subj = Subject(name=subject)
    db.add(subj)
    db.flush()
    array = Array(subject_id=subj.id, name=f"{subject}-A", region="IT")
    db.add(array)
    db.flush()
    sites = [
        Site(site_id=f"{subject}-s{i:02d}", array_id=array.id, electrode=f"e{i}") for i in range(n_sites)
    ]
    db.add_all(sites)
    images = [
        Image(
            sha256=hashlib.sha256(f"{subject}-img-{i}".encode()).hexdigest(), width=8, height=8, n_bytes=100
        )
        for i in range(n_images)
    ]
    db.add_all(images)
    db.flush()
    # one perturbed image so lineage coords are exercised
    images[-1].kind = "perturbed"
    images[-1].parent_id = images[0].id
    images[-1].epsilon = 2.0
    images[-1].direction = "up"
    images[-1].seed = 7
    images[-1].site_pk = sites[0].id
    db.commit()
    return Lab(
        subject,
        [s.site_id for s in sites],
        [i.sha256 for i in images],
        [i.id for i in images],
        [s.id for s in sites],
        sid=f"sess-{subject}",
    )


@dataclass
class Synthetic:
    site: np.ndarray  # str site id per spike
    times: np.ndarray
    event_ids: list[str]
    images: list[str]
    onsets: np.ndarray
    fixation: np.ndarray


def synth(lab: Lab, seed: int = 0, n_pres: int = 40, rate_hz: float = 30.0, isi_s: float = 0.3) -> Synthetic:
    rng = np.random.default_rng(seed)
    onsets = 1.0 + np.arange(n_pres) * isi_s + rng.uniform(0, 0.01, n_pres)
    onsets = np.round(onsets, 6)
    span = onsets[-1] + 1.0
    sites, times = [], []
    for sid in lab.site_ids:
        n = rng.poisson(rate_hz * span)
        t = rng.uniform(0.5, span, n)
        sites.append(np.full(n, sid))
        times.append(t)
    order = rng.permutation(sum(len(t) for t in times))  # unsorted, interleaved, like a real dump
    return Synthetic(
        site=np.concatenate(sites)[order],
        times=np.concatenate(times)[order],
        event_ids=[f"ev-{i:05d}" for i in range(n_pres)],
        images=[lab.images[i % len(lab.images)] for i in range(n_pres)],
        onsets=onsets,
        fixation=rng.uniform(size=n_pres) > 0.1,
    )


def _tables(data: Synthetic) -> tuple[pa.Table, pa.Table]:
    """The spikes and presentations tables of an upload, for any columnar format."""
    spikes = pa.table({"site_id": data.site.tolist(), "time_s": data.times})
    presentations = pa.table(
        {
            "event_id": data.event_ids,
            "image_sha256": data.images,
            "onset_s": data.onsets,
            "fixation_ok": data.fixation,
        }
    )
    return spikes, presentations


def write_csv(folder: Path, data: Synthetic, tag: str = "") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sp, pr = folder / f"spikes{tag}.csv", folder / f"presentations{tag}.csv"
    spikes, presentations = _tables(data)
    pacsv.write_csv(spikes, sp)
    pacsv.write_csv(presentations, pr)
    return {"spikes": sp, "presentations": pr}


def write_parquet(folder: Path, data: Synthetic) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sp, pr = folder / "spikes.parquet", folder / "presentations.parquet"
    spikes, presentations = _tables(data)
    pq.write_table(spikes, sp)
    pq.write_table(presentations, pr)
    return {"spikes": sp, "presentations": pr}


def write_nwb(
    path: Path,
    data: Synthetic,
    with_event_ids: bool = True,
    where: str = "intervals",
    subject_id: str | None = None,
    with_subject: bool = True,
) -> Path:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject as NWBSubject

    nwb = NWBFile(
        session_description="test",
        identifier="t",
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        subject=NWBSubject(subject_id=subject_id, species="Macaca mulatta", sex="M", age="P7Y")
        if with_subject
        else None,
    )
    nwb.add_unit_column(name="site_id", description="site")
    for sid in sorted(set(data.site.tolist())):
        nwb.add_unit(spike_times=np.sort(data.times[data.site == sid]), site_id=sid)
    table = TimeIntervals(name="presentations", description="presentations")
    table.add_column(name="image_sha256", description="hash")
    if with_event_ids:
        table.add_column(name="event_id", description="event")
    table.add_column(name="fixation_ok", description="fix")
    for i in range(len(data.onsets)):
        row: dict[str, Any] = {
            "start_time": float(data.onsets[i]),
            "stop_time": float(data.onsets[i]) + 0.1,
            "image_sha256": data.images[i],
            "fixation_ok": bool(data.fixation[i]),
        }
        if with_event_ids:
            row["event_id"] = data.event_ids[i]
        table.add_row(**row)
    if where == "intervals":
        nwb.add_time_intervals(table)
    else:
        nwb.create_processing_module(name="behavior", description="b").add(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def brute_force_counts(data: Synthetic, site_ids: list[str], window_ms: tuple[float, float]) -> np.ndarray:
    """(n_presentations by onset, n_sites): a plain loop, the reference for the vectorised counts."""
    a, b = window_ms[0] / 1000, window_ms[1] / 1000
    order = np.argsort(data.onsets, kind="stable")
    out = np.zeros((len(order), len(site_ids)), dtype=np.int64)
    for j, sid in enumerate(site_ids):
        t = data.times[data.site == sid]
        for r, i in enumerate(order):
            o = data.onsets[i]
            out[r, j] = int(np.sum((t >= o + a) & (t < o + b)))
    return out


def row_counts(db: Session) -> dict[str, int]:
    db.expire_all()
    return {
        t.__tablename__: int(db.scalar(select(func.count()).select_from(t)) or 0)
        for t in (RecordingSession, Presentation, SpikeTrain, Response)
    }


def create_session(
    client: Any, auth: Any, lab: Lab, session_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "session_id": session_id or lab.sid,
        "subject": lab.subject,
        "day": 1,
        "meta": {"note": "t"},
        **extra,
    }
    r = client.post("/api/v1/sessions", json=body, headers=auth("experimenter"))
    assert r.status_code in (200, 201), r.text
    return r.json()


def upload(
    client: Any, auth: Any, session_id: str, files: dict[str, Path], role: str = "experimenter", **params: Any
) -> Any:
    handles = {k: (p.name, p.read_bytes()) for k, p in files.items()}
    return client.post(
        f"/api/v1/sessions/{session_id}/spikes", files=handles, params=params, headers=auth(role)
    )
