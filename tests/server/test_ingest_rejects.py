"""Bad uploads: each is a clear 4xx naming the problem, and the database is left unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from tests.server.test_recordings_helpers import (
    Lab,
    Synthetic,
    create_session,
    make_lab,
    row_counts,
    synth,
    upload,
    write_csv,
    write_nwb,
)


def _truncated_nwb(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    path = write_nwb(tmp / "t.nwb", data)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return {"file": path}


def _corrupted_nwb(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    path = write_nwb(tmp / "c.nwb", data)
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    raw[512:] = rng.integers(0, 256, len(raw) - 512, dtype=np.uint8).tobytes()  # keep the signature
    path.write_bytes(bytes(raw))
    return {"file": path}


def _not_nwb(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    path = tmp / "n.nwb"
    path.write_bytes(b"this is a text file, not HDF5\n" * 10)
    return {"file": path}


def _bad_csv_row(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    files = write_csv(tmp, data)
    lines = files["spikes"].read_text().splitlines()
    lines[5] = f'"{lab.site_ids[0]}",abc'  # row 6 of the file (header is row 1)
    files["spikes"].write_text("\n".join(lines) + "\n")
    return files


def _short_csv_row(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    files = write_csv(tmp, data)
    lines = files["presentations"].read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0]
    files["presentations"].write_text("\n".join(lines) + "\n")
    return files


def _ms_spikes(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.times = data.times * 1000.0
    return write_csv(tmp, data)


def _ms_everything(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.times = data.times * 1000.0
    data.onsets = data.onsets * 1000.0
    return write_csv(tmp, data)


def _unknown_image(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.images[7] = "f" * 64
    return write_csv(tmp, data)


def _unknown_site(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.site = data.site.astype(object)
    data.site[11] = "no-such-site"
    return write_csv(tmp, data)


def _negative_time(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.times[3] = -0.5
    return write_csv(tmp, data)


def _nan_onset(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.onsets[2] = np.nan
    return write_csv(tmp, data)


def _conflicting_event(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    data.event_ids[9] = data.event_ids[4]
    return write_csv(tmp, data)


def _missing_field(tmp: Path, lab: Lab, data: Synthetic) -> dict[str, Path]:
    return {"spikes": write_csv(tmp, data)["spikes"]}


CASES: dict[str, tuple[Callable[[Path, Lab, Synthetic], dict[str, Path]], int, list[str]]] = {
    "truncated-nwb": (_truncated_nwb, 422, ["NWB", "truncated"]),
    "corrupted-nwb": (_corrupted_nwb, 422, ["NWB file could not be read"]),
    "not-hdf5": (_not_nwb, 422, ["HDF5 signature"]),
    "csv-bad-value": (_bad_csv_row, 422, ["row 6", "'time_s'", "'abc'"]),
    "csv-short-row": (_short_csv_row, 422, ["presentations", "row 4", "fields"]),
    "spikes-in-ms": (_ms_spikes, 422, ["milliseconds"]),
    "all-in-ms": (_ms_everything, 422, ["milliseconds"]),
    "unknown-image": (_unknown_image, 422, ["unknown image", "f" * 64, "row"]),
    "unknown-site": (_unknown_site, 422, ["unknown site", "no-such-site"]),
    "negative-time": (_negative_time, 422, ["time_s=-0.5", ">= 0"]),
    "nan-onset": (_nan_onset, 422, ["onset_s", "row 4"]),
    "conflicting-event": (_conflicting_event, 422, ["ev-00004", "different"]),
    "missing-field": (_missing_field, 422, ["'presentations'"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_upload_is_rejected_and_changes_nothing(
    client, auth, db_session: Session, tmp_path: Path, case: str
) -> None:
    make_files, status, words = CASES[case]
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    files = make_files(tmp_path, lab, synth(lab, seed=11))
    before = row_counts(db_session)
    r = upload(client, auth, lab.sid, files)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    assert row_counts(db_session) == before


def test_rejected_replacement_keeps_the_old_data(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    assert upload(client, auth, lab.sid, write_csv(tmp_path / "a", synth(lab, seed=1))).status_code == 200
    before = row_counts(db_session)
    bad = synth(lab, seed=2)
    bad.images[0] = "0" * 64
    r = upload(client, auth, lab.sid, write_csv(tmp_path / "b", bad), replace="true")
    assert r.status_code == 422 and "unknown image" in r.json()["detail"]
    assert row_counts(db_session) == before


def test_oversized_upload_is_413(client, auth, db_session: Session, settings, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    files = write_csv(tmp_path, synth(lab, seed=3))
    settings.max_upload_bytes = files["spikes"].stat().st_size // 2
    before = row_counts(db_session)
    r = upload(client, auth, lab.sid, files)
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["detail"] and str(settings.max_upload_bytes) in r.json()["detail"]
    assert row_counts(db_session) == before


def test_sites_of_another_subject_are_rejected(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    other = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(other, seed=4)
    data.images = [lab.images[0]] * len(data.images)
    r = upload(client, auth, lab.sid, write_csv(tmp_path, data))
    assert r.status_code == 422 and "another subject" in r.json()["detail"]


def test_unknown_session_is_404(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    r = upload(client, auth, "no-such-session", write_csv(tmp_path, synth(lab)))
    assert r.status_code == 404 and "no-such-session" in r.json()["detail"]
