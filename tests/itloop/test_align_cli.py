"""``itloop align`` as a user runs it: files in, an uploadable presentations CSV and a report out."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.test_clock_alignment import simulate


def _itloop(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["ITLOOP_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "itloop.cli", "align", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    sim = simulate(seed=11, n_trials=60)
    events = tmp_path / "events.ndjson"
    events.write_text(
        "".join(
            json.dumps({"event_id": f"b:{k}", "seq": k, "image_sha256": f"{k % 7:064x}", "onset_s": float(t)})
            + "\n"
            for k, t in enumerate(sim.rig_onset)
        )
    )
    sync = tmp_path / "sync.csv"
    with open(sync, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time_s", "stop_s"])
        w.writerows(zip(sim.pulse_on, sim.pulse_off, strict=True))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"sequence": [{"seq": k, "on_ms": 100} for k in range(len(sim.rig_onset))]})
    )
    return {"events": events, "sync": sync, "manifest": manifest, "sim": sim}  # type: ignore[dict-item]


def test_align_writes_presentations_and_report(files: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    out, report = tmp_path / "out" / "presentations.csv", tmp_path / "out" / "report.json"
    r = _itloop(
        [
            "--events",
            str(files["events"]),
            "--sync",
            str(files["sync"]),
            "--out",
            str(out),
            "--report",
            str(report),
            "--manifest",
            str(files["manifest"]),
            "--refresh-hz",
            "60",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "drift +50." in r.stdout and "dropped" in r.stdout
    rep = json.loads(report.read_text())
    sim = files["sim"]
    assert rep["residual_rms_ms"] < 0.5 and abs(rep["drift_ppm"] - 50) < 2
    flagged = {f["event_id"] for f in rep["flagged"] if f["dropped_frames"] == 1}
    assert flagged == {f"b:{i}" for i in sim.dropped if sim.has_pulse[i]}
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(sim.rig_onset) and rows[0].keys() >= {
        "event_id",
        "image_sha256",
        "onset_s",
        "fixation_ok",
    }
    onset = {r["event_id"]: float(r["onset_s"]) for r in rows}
    err = [abs(onset[f"b:{k}"] - t) for k, t in enumerate(sim.true_onset) if k not in set(sim.late)]
    assert max(err) < 1e-3
    # The same presentations CSV is what a spike upload reads.
    from server.recordings.ingest.columnar import PRESENTATION_COLUMNS, _read_table

    table = _read_table(out, "presentations", PRESENTATION_COLUMNS)
    assert table.num_rows == len(rows) and np.allclose(
        table["onset_s"].to_numpy(), [float(r["onset_s"]) for r in rows]
    )


def test_align_errors_are_messages(files: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    out = tmp_path / "p.csv"
    r = _itloop(
        ["--events", str(tmp_path / "nope.csv"), "--sync", str(files["sync"]), "--out", str(out)], tmp_path
    )
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    few = tmp_path / "few.csv"
    few.write_text("time_s\n1.0\n2.0\n")
    r = _itloop(["--events", str(files["events"]), "--sync", str(few), "--out", str(out)], tmp_path)
    assert (
        r.returncode == 1 and "cannot align: too few sync pulses" in r.stderr and "Traceback" not in r.stderr
    )
    assert not out.exists()
