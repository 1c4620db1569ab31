"""Spike uploads aligned by sync pulses, and uploads cross-checked against the rig's events, over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.settings import Settings
from itloop.storage import ObjectStore, open_store
from server.batches import service as batches
from server.lab import service as lab_service
from server.recordings.tables import Presentation, RecordingSession
from tests.server.test_batches import make_images
from tests.server.test_recordings_helpers import create_session, make_lab, row_counts, upload

API = "/api/v1"
FRAME = 1 / 60
OFFSET = 250.0
DRIFT = 50e-6


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_store(settings.resolved_store_url)


@dataclass
class Day:
    batch_id: str
    rig_id: str
    events: list[dict[str, Any]]
    true_onset: dict[str, float]  # recorder clock
    dropped: str  # event id shown one frame too long
    lab: Any


def rig_day(db: Session, store: ObjectStore, client: Any, rig_auth: Any, seed: int = 0) -> Day:
    """A published batch of 160 presentations (trials of 8, gaps), shown with one dropped frame."""
    rng = np.random.default_rng(seed)
    lab = make_lab(db, n_sites=3)
    rig_id = f"rig-{lab.subject}"
    lab_service.create_rig(session=db, rig_id=rig_id, subject=lab.subject, screen={"refresh_hz": 60})
    images = make_images(db, store, 4)
    n = 160
    batch = batches.create_batch(
        session=db,
        rig_id=rig_id,
        batch_id=f"{rig_id}-d1",
        day=1,
        model_version_id=None,
        images=[(im, "clean") for im in images],
        sequence=[
            {"seq": k, "image_id": images[k % 4].id, "trial": k // 8, "on_ms": 100, "off_ms": 100}
            for k in range(n)
        ],
    )
    batches.publish(session=db, batch=batch, store=store)
    db.commit()
    manifest = batches.get_manifest(session=db, batch_id=batch.batch_id)
    frames, t = [], 60
    dropped_k = 37
    for k in range(n):
        frames.append(t)
        t += (7 if k == dropped_k else 6) + 6 + (int(rng.integers(20, 60)) if k % 8 == 7 else 0)
    start = np.asarray(frames) * FRAME
    events = [
        {
            "event_id": f"{batch.batch_id}:{k}",
            "seq": k,
            "image_sha256": manifest["sequence"][k]["image_sha256"],
            "onset_s": float(start[k] + rng.normal(0, 5e-5)),
        }
        for k in range(n)
    ]
    r = client.post(f"{API}/batches/{batch.batch_id}/presentations", json=events, headers=rig_auth(rig_id))
    assert r.status_code == 200, r.text
    true = {e["event_id"]: OFFSET + (1 + DRIFT) * s for e, s in zip(events, start, strict=True)}
    return Day(batch.batch_id, rig_id, events, true, events[dropped_k]["event_id"], lab)


def write_spikes(folder: Path, day: Day, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lo, hi = min(day.true_onset.values()), max(day.true_onset.values()) + 1
    sites, times = [], []
    for sid in day.lab.site_ids:
        k = int(rng.poisson(20 * (hi - lo)))
        sites += [sid] * k
        times.append(rng.uniform(lo, hi, k))
    path = folder / "spikes.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table({"site_id": sites, "time_s": np.concatenate(times)}), path)
    return path


def write_sync(folder: Path, day: Day, *, drop: int = 3, extra: int = 2, seed: int = 0) -> Path:
    """Pulses: rising at each true onset, falling 6 frames later (7 for the dropped frame)."""
    rng = np.random.default_rng(seed)
    on = np.asarray(list(day.true_onset.values())) + rng.normal(0, 1e-4, len(day.true_onset))
    width = np.full(len(on), 6 * FRAME * (1 + DRIFT))
    width[list(day.true_onset).index(day.dropped)] = 7 * FRAME * (1 + DRIFT)
    keep = np.ones(len(on), bool)
    keep[rng.choice(np.arange(40, len(on)), drop, replace=False)] = False
    on, off = on[keep], (on + width)[keep]
    spur = rng.uniform(on[0], on[-1], extra)
    on, off = np.concatenate([on, spur]), np.concatenate([off, spur + 0.01])
    path = folder / "sync.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table({"time_s": on, "stop_s": off}), path)
    return path


def test_sync_upload_builds_presentations_on_the_recorder_clock(
    client: Any, auth: Any, rig_auth: Any, db_session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    day = rig_day(db_session, store, client, rig_auth)
    sid = day.lab.sid
    create_session(client, auth, day.lab, session_id=sid, batch_id=day.batch_id, rig_id=day.rig_id)
    files = {"spikes": write_spikes(tmp_path, day), "sync": write_sync(tmp_path, day)}
    r = upload(client, auth, sid, files)
    assert r.status_code == 200, r.text
    body = r.json()
    rep = body["alignment"]
    assert body["presentations"] == 160 and body["sites"] == 3 and body["responses"] == 480
    assert rep["offset_s"] == pytest.approx(OFFSET, abs=1e-3)
    assert rep["drift_ppm"] == pytest.approx(50, abs=10)
    assert rep["residual_rms_ms"] < 0.5 and rep["n_missing_pulses"] == 3 and rep["n_extra_pulses"] == 2
    assert rep["n_dropped"] == 1 and rep["flagged"][0]["event_id"] == day.dropped
    assert rep["flagged"][0]["dropped_frames"] == 1 and len(rep["missing_pulse_events"]) == 3
    rec = db_session.scalar(select(RecordingSession).where(RecordingSession.session_id == sid))
    assert rec is not None
    stored = dict(
        db_session.execute(
            select(Presentation.event_id, Presentation.onset_s).where(Presentation.session_pk == rec.id)
        ).all()
    )
    assert set(stored) == set(day.true_onset)
    err = np.abs(np.asarray([stored[e] - day.true_onset[e] for e in stored]))
    assert err.max() < 1e-3  # pulses where present, the clock map where not
    got = client.get(f"{API}/sessions/{sid}", headers=auth("viewer")).json()
    assert got["ingest"]["alignment"]["n_dropped"] == 1 and got["ingest"]["format"] == "csv+sync"
    again = upload(client, auth, sid, files)
    assert again.status_code == 200 and again.json()["repeated"] is True


def test_unmatchable_pulses_are_refused_and_nothing_is_stored(
    client: Any, auth: Any, rig_auth: Any, db_session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    day = rig_day(db_session, store, client, rig_auth, seed=1)
    sid = day.lab.sid
    create_session(client, auth, day.lab, session_id=sid, batch_id=day.batch_id, rig_id=day.rig_id)
    spikes = write_spikes(tmp_path, day)
    before = row_counts(db_session)
    few = tmp_path / "few.csv"
    few.write_text("time_s\n" + "".join(f"{OFFSET + i}\n" for i in range(20)))
    r = upload(client, auth, sid, {"spikes": spikes, "sync": few})
    assert r.status_code == 422 and "too few sync pulses: 20 for 160" in r.json()["detail"]
    noise = tmp_path / "noise.csv"
    t = np.sort(np.random.default_rng(5).uniform(OFFSET, OFFSET + 60, 170))
    noise.write_text("time_s\n" + "".join(f"{x:.6f}\n" for x in t))
    r = upload(client, auth, sid, {"spikes": spikes, "sync": noise})
    assert r.status_code == 422 and "inconsistent sync pulses" in r.json()["detail"]
    bad = tmp_path / "bad.csv"
    bad.write_text("when\n1.0\n")
    r = upload(client, auth, sid, {"spikes": spikes, "sync": bad})
    assert r.status_code == 422 and "time_s" in r.json()["detail"]
    r = upload(client, auth, sid, {"spikes": spikes}, sync_series="ttl")
    assert r.status_code == 422 and "'sync' file" in r.json()["detail"]
    assert row_counts(db_session) == before
    # A session without a batch has no rig events to align.
    other = create_session(client, auth, day.lab, session_id=f"{sid}-nobatch")
    r = upload(client, auth, other["session_id"], {"spikes": spikes, "sync": write_sync(tmp_path, day)})
    assert r.status_code == 422 and "names no batch" in r.json()["detail"]


def test_nwb_with_a_ttl_series(
    client: Any, auth: Any, rig_auth: Any, db_session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    day = rig_day(db_session, store, client, rig_auth, seed=2)
    sid = day.lab.sid
    create_session(client, auth, day.lab, session_id=sid, batch_id=day.batch_id, rig_id=day.rig_id)
    sync = np.loadtxt(write_sync(tmp_path, day), delimiter=",", skiprows=1)
    spikes = np.loadtxt(write_spikes(tmp_path, day), delimiter=",", skiprows=1, dtype=str)
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description="t",
        identifier="t",
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        subject=Subject(subject_id=day.lab.subject, species="Macaca mulatta", sex="M", age="P7Y"),
    )
    nwb.add_unit_column(name="site_id", description="site")
    for s in day.lab.site_ids:
        nwb.add_unit(spike_times=np.sort(spikes[spikes[:, 0] == s, 1].astype(float)), site_id=s)
    edges = np.concatenate([sync[:, 0], sync[:, 1]])
    levels = np.concatenate([np.ones(len(sync)), np.zeros(len(sync))])
    order = np.argsort(edges)
    nwb.add_acquisition(
        TimeSeries(name="ttl", data=levels[order], timestamps=edges[order], unit="V", description="TTL line")
    )
    path = tmp_path / "rec.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    r = upload(client, auth, sid, {"file": path}, sync_series="ttl")
    assert r.status_code == 200, r.text
    rep = r.json()["alignment"]
    assert rep["n_dropped"] == 1 and rep["residual_rms_ms"] < 0.5
    r = upload(client, auth, sid, {"file": path}, sync_series="nope", replace="true")
    assert r.status_code == 422 and "no object named 'nope'" in r.json()["detail"]


def _presentations_csv(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    pacsv.write_csv(
        pa.table(
            {
                "event_id": [r[0] for r in rows],
                "image_sha256": [r[1] for r in rows],
                "onset_s": [r[2] for r in rows],
            }
        ),
        path,
    )
    return path


def test_uploaded_presentations_are_cross_checked_against_the_rig(
    client: Any, auth: Any, rig_auth: Any, db_session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    day = rig_day(db_session, store, client, rig_auth, seed=3)
    sid = day.lab.sid
    create_session(client, auth, day.lab, session_id=sid, batch_id=day.batch_id, rig_id=day.rig_id)
    spikes = write_spikes(tmp_path, day)
    rows = [(e["event_id"], e["image_sha256"], day.true_onset[e["event_id"]]) for e in day.events]
    before = row_counts(db_session)

    late = list(rows)
    late[10] = (rows[10][0], rows[10][1], rows[10][2] + 0.05)
    r = upload(
        client, auth, sid, {"spikes": spikes, "presentations": _presentations_csv(tmp_path / "p1.csv", late)}
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert f"'{rows[10][0]}' by +50.0 ms" in detail and "1 uploaded onset(s)" in detail

    swapped = list(rows)
    other = next(e["image_sha256"] for e in day.events if e["image_sha256"] != rows[4][1])
    swapped[4] = (rows[4][0], other, rows[4][2])
    r = upload(
        client,
        auth,
        sid,
        {"spikes": spikes, "presentations": _presentations_csv(tmp_path / "p2.csv", swapped)},
    )
    assert r.status_code == 422 and f"'{rows[4][0]}': rig showed {rows[4][1][:12]}" in r.json()["detail"]
    assert row_counts(db_session) == before

    r = upload(
        client, auth, sid, {"spikes": spikes, "presentations": _presentations_csv(tmp_path / "p3.csv", rows)}
    )
    assert r.status_code == 200, r.text
    check = r.json()["rig_cross_check"]
    assert check["checked"] == 160 and check["drift_ppm"] == pytest.approx(50, abs=10)
    assert check["residual_max_ms"] < 1 and check["tolerance_ms"] == pytest.approx(1000 / 60)
