"""NWB in and out without loss: a rich pynwb upload round-trips field by field, the export passes
``nwbinspector --config dandi``, NeuroConv-style files map their units to sites, bad files are 422."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from itloop.settings import Settings
from tests.server.nwb_fixtures import START, api_lab, record, write_rich_nwb
from tests.server.test_recordings_helpers import row_counts, upload

API = "/api/v1"


def _session(client: Any, auth: Any, owner: Any, session_id: str | None = None, **fields: Any) -> None:
    body = {"session_id": session_id or owner.sid, "subject": owner.subject, **fields}
    r = client.post(f"{API}/sessions", json=body, headers=auth("experimenter"))
    assert r.status_code == 201, r.text


def _export(client: Any, auth: Any, session_id: str, path: Path) -> Path:
    r = client.get(f"{API}/sessions/{session_id}/export.nwb", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return path


def test_rich_upload_round_trips_every_field(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    from pynwb import NWBHDF5IO

    lab = api_lab(client, auth, db_session, settings)
    rec = record(lab)
    _session(client, auth, lab)
    first = upload(client, auth, lab.sid, {"file": write_rich_nwb(tmp_path / "rich.nwb", lab, rec)})
    assert first.status_code == 200, first.text
    shown = client.get(f"{API}/sessions/{lab.sid}", headers=auth("viewer")).json()
    assert shown["session_start_time"] == "2026-03-02T09:00:00-05:00"
    assert shown["experimenter"] == ["Doe, Jane", "Roe, Richard"]

    path = _export(client, auth, lab.sid, tmp_path / "export.nwb")
    second = _export(client, auth, lab.sid, tmp_path / "again.nwb")
    with NWBHDF5IO(str(path), "r") as io_, NWBHDF5IO(str(second), "r") as io2:
        nwb, other = io_.read(), io2.read()
        assert nwb.identifier != other.identifier  # a fresh UUID per export
        assert str(uuid.UUID(nwb.identifier)) == nwb.identifier
        assert nwb.session_start_time == START and nwb.session_start_time.utcoffset() == START.utcoffset()
        assert nwb.session_description == "RSVP of clean and perturbed images, aIT Utah array"
        assert list(nwb.experimenter) == ["Doe, Jane", "Roe, Richard"]
        assert (nwb.institution, nwb.lab) == ("Example University", "DiCarlo-style lab")
        assert list(nwb.keywords[:]) == ["IT cortex", "adversarial", "macaque"]
        s = nwb.subject
        assert (s.subject_id, s.species, s.sex, s.age, s.weight, s.strain, s.description) == (
            lab.subject,
            "Macaca mulatta",
            "M",
            "P7Y",
            "9 kg",
            "Indian origin",
            "adult male rhesus",
        )
        device = nwb.devices["Blackrock Cerebus"]
        assert (device.manufacturer, device.description) == (
            "Blackrock Microsystems",
            "128-channel acquisition",
        )
        group = nwb.electrode_groups[lab.array]
        assert (group.location, group.description, group.device.name) == ("aIT", "Utah array A", device.name)
        electrodes = nwb.electrodes.to_dataframe().set_index("site_id")
        for i, sid in enumerate(lab.site_ids):
            row = electrodes.loc[sid]
            assert (row["x"], row["y"], row["z"], row["location"]) == (10.0 + i, -2.5, 31.25 - i, "aIT")
            assert row["group_name"] == lab.array
        assert nwb.units.resolution == 1 / 30000
        units = nwb.units.to_dataframe().set_index("site_id")
        for sid, train in zip(lab.site_ids, rec.trains, strict=True):
            np.testing.assert_array_equal(units.loc[sid, "spike_times"], train)
            row = electrodes.loc[sid]
            linked = units.loc[sid, "electrodes"]
            assert linked["x"].tolist() == [row["x"]]  # each unit points at its own electrode
        pres = nwb.intervals["presentations"].to_dataframe().set_index("event_id").loc[rec.event_ids]
        np.testing.assert_array_equal(pres["start_time"].to_numpy(), rec.onsets)
        np.testing.assert_array_equal(pres["stop_time"].to_numpy(), rec.stops)  # no median substitution
        assert pres["stop_time_measured"].all() and list(pres["image_sha256"]) == rec.images
    again = upload(client, auth, lab.sid, {"file": path})  # an export is the same data again
    assert again.status_code == 200 and again.json() == {**first.json(), "repeated": True}


def _inspect(path: Path) -> str:
    """`nwbinspector --config dandi` as a user runs it; its report as text."""
    exe = Path(sys.executable).with_name("nwbinspector")
    done = subprocess.run(
        [str(exe), "--config", "dandi", str(path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert "Scanned 1 file" in done.stdout, done.stdout + done.stderr
    return done.stdout


def test_demo_like_export_passes_nwbinspector_dandi(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    """A session as the demo makes it (its virtual rig's NWB writer), with images in the store and
    a perturbed twin: 0 CRITICAL, 0 BEST_PRACTICE_VIOLATION; images and lineage are in the file."""
    from pynwb import NWBHDF5IO

    from demo.virtual_rig import write_nwb

    lab = api_lab(client, auth, db_session, settings, subject_fields={"sex": "M"})
    rec = record(lab, n_pres=48)
    _session(client, auth, lab)
    src = write_nwb(
        tmp_path / "demo.nwb",
        session_id=lab.sid,
        site_ids=lab.site_ids,
        spikes=rec.trains,
        onsets=rec.onsets,
        on_s=0.1,
        shas=rec.images,
        event_ids=rec.event_ids,
        fixation_ok=np.ones(len(rec.onsets), dtype=bool),
        subject=lab.subject,
    )
    assert upload(client, auth, lab.sid, {"file": src}).status_code == 200
    path = _export(client, auth, lab.sid, tmp_path / "export.nwb")
    report = _inspect(path)
    assert not re.search(r"\bCRITICAL\b", report), report
    assert "BEST_PRACTICE_VIOLATION" not in report, report
    assert "PYNWB_VALIDATION" not in report, report
    with NWBHDF5IO(str(path), "r") as io_:
        nwb = io_.read()
        images = nwb.stimulus_template["stimulus_images"]
        assert sorted(images.images) == sorted(set(rec.images))
        for sha in set(rec.images):
            np.testing.assert_array_equal(images.images[sha].data[:], lab.pixels[sha])  # pixels as served
        series = nwb.stimulus["presentation_images"]
        order = [im.name for im in images.order_of_images.data[:]]
        np.testing.assert_array_equal(series.timestamps[:], rec.onsets)
        assert [order[i] for i in series.data[:]] == rec.images
        lineage = nwb.stimulus["image_lineage"].to_dataframe().set_index("image_sha256")
        p = lab.perturbed
        row = lineage.loc[p["sha256"]]
        assert (row["parent_sha256"], row["model_version"], row["perturbed_site"], row["direction"]) == (
            p["parent_sha256"],
            p["model_version"],
            p["site_id"],
            "up",
        )
        assert (row["epsilon"], row["seed"], row["predicted_change"], row["achieved_l2"]) == (
            1.0,
            123456789012,
            4.25,
            0.987,
        )
        assert order[row["image_index"]] == p["sha256"]
        assert nwb.subject.sex == "M" and nwb.subject.age == "P7Y"


def test_metadata_registered_through_the_api_reaches_the_export(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    """A CSV upload carries no metadata: the subject's and session's registered fields are exported."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from pynwb import NWBHDF5IO

    exp = auth("experimenter")
    bad = [
        ({"age": "7 years"}, "ISO 8601 duration"),
        ({"sex": "male"}, "sex"),
        ({"date_of_birth": "2019-05-01T00:00:00"}, "time zone"),
    ]
    for fields, words in bad:
        r = client.post(f"{API}/subjects", json={"name": "bad-subject", **fields}, headers=exp)
        assert r.status_code == 422 and words in r.text, r.text
    lab = api_lab(
        client,
        auth,
        db_session,
        settings,
        subject_fields={"sex": "F", "date_of_birth": "2019-05-01T00:00:00+02:00", "strain": "Chinese origin"},
    )
    got = client.get(f"{API}/subjects/{lab.subject}", headers=auth("viewer")).json()
    assert (got["sex"], got["date_of_birth"]) == ("F", "2019-05-01T00:00:00+02:00")
    fields = {
        "session_start_time": "2026-04-01T14:30:00+02:00",
        "description": "day 1 of the closed loop",
        "experimenter": ["Curie, Marie"],
        "institution": "Institut",
        "lab": "Lab X",
        "keywords": ["IT"],
        "subject_age": "P6Y11M",
        "subject_weight": "7.5 kg",
    }
    _session(client, auth, lab, **fields)
    r = client.post(
        f"{API}/sessions",
        json={"session_id": "naive", "subject": lab.subject, "session_start_time": "2026-04-01T14:30:00"},
        headers=exp,
    )
    assert r.status_code == 422 and "time zone" in r.text
    rec = record(lab, n_pres=20)
    sp, pr = tmp_path / "spikes.csv", tmp_path / "presentations.csv"
    sites = np.concatenate([np.full(len(t), s) for s, t in zip(lab.site_ids, rec.trains, strict=True)])
    pacsv.write_csv(pa.table({"site_id": sites.tolist(), "time_s": np.concatenate(rec.trains)}), sp)
    pacsv.write_csv(
        pa.table({"event_id": rec.event_ids, "image_sha256": rec.images, "onset_s": rec.onsets}), pr
    )
    assert upload(client, auth, lab.sid, {"spikes": sp, "presentations": pr}).status_code == 200
    with NWBHDF5IO(str(_export(client, auth, lab.sid, tmp_path / "e.nwb")), "r") as io_:
        nwb = io_.read()
        assert nwb.session_start_time.isoformat() == "2026-04-01T14:30:00+02:00"
        assert (nwb.session_description, list(nwb.experimenter), nwb.institution, nwb.lab) == (
            "day 1 of the closed loop",
            ["Curie, Marie"],
            "Institut",
            "Lab X",
        )
        s = nwb.subject
        assert (s.sex, s.age, s.weight, s.strain) == ("F", "P6Y11M", "7.5 kg", "Chinese origin")
        assert s.date_of_birth.isoformat() == "2019-05-01T00:00:00+02:00"
        device = nwb.devices["Utah array 96ch"]  # the array's registered device
        assert device.manufacturer == "Blackrock Microsystems"
        electrodes = nwb.electrodes.to_dataframe().set_index("site_id")
        assert (
            electrodes.loc[lab.site_ids[2], "x"] == 2.0
            and electrodes.loc[lab.site_ids[2], "label"] == "elec3"
        )
        pres = nwb.intervals["presentations"].to_dataframe()
        assert not pres["stop_time_measured"].any()  # CSV gave no stop times: said so, not hidden


def test_neuroconv_units_map_to_sites_by_electrode_or_explicit_map(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    from pynwb import NWBHDF5IO

    lab = api_lab(client, auth, db_session, settings)
    rec = record(lab, n_pres=30)
    path = write_rich_nwb(tmp_path / "nc.nwb", lab, rec, neuroconv=True, table_name="trials")
    _session(client, auth, lab)
    r = upload(client, auth, lab.sid, {"file": path})
    assert r.status_code == 422 and "'trials'" in r.json()["detail"], r.text  # says which tables exist
    r = upload(client, auth, lab.sid, {"file": path}, presentations_table="trials")
    assert r.status_code == 200, r.text
    assert r.json()["sites"] == len(lab.site_ids) and r.json()["presentations"] == 30
    with NWBHDF5IO(str(_export(client, auth, lab.sid, tmp_path / "e.nwb")), "r") as io_:
        units = io_.read().units.to_dataframe().set_index("site_id")
        for sid, train in zip(lab.site_ids, rec.trains, strict=True):  # electrode elecN -> site N
            np.testing.assert_array_equal(units.loc[sid, "spike_times"], train)
    # an explicit map wins over the electrode rule: swap the first two units' sites
    other = f"{lab.sid}-map"
    _session(client, auth, lab, session_id=other)
    swap = f'{{"u0": "{lab.site_ids[1]}", "1": "{lab.site_ids[0]}"}}'  # by unit name, and by unit id
    r = upload(client, auth, other, {"file": path}, presentations_table="trials", site_map=swap)
    assert r.status_code == 200, r.text
    with NWBHDF5IO(str(_export(client, auth, other, tmp_path / "m.nwb")), "r") as io_:
        units = io_.read().units.to_dataframe().set_index("site_id")
        np.testing.assert_array_equal(units.loc[lab.site_ids[1], "spike_times"], rec.trains[0])
        np.testing.assert_array_equal(units.loc[lab.site_ids[0], "spike_times"], rec.trains[1])
    r = upload(client, auth, other, {"file": path}, presentations_table="trials", site_map="[1, 2]")
    assert r.status_code == 422 and "site_map" in r.json()["detail"]


def test_bad_nwb_is_refused_with_what_and_where_and_nothing_is_stored(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    lab = api_lab(client, auth, db_session, settings)
    rec = record(lab, n_pres=20)
    _session(client, auth, lab)
    stranger = api_lab(client, auth, db_session, settings)  # another monkey's file
    _session(client, auth, stranger, session_id=f"{lab.sid}-x")
    before = row_counts(db_session)

    r = upload(
        client, auth, lab.sid, {"file": write_rich_nwb(tmp_path / "ns.nwb", lab, rec, with_subject=False)}
    )
    assert r.status_code == 422 and "no subject" in r.json()["detail"], r.text

    other_file = write_rich_nwb(tmp_path / "o.nwb", stranger, record(stranger, n_pres=20))
    r = upload(client, auth, lab.sid, {"file": other_file})
    assert (
        r.status_code == 422 and stranger.subject in r.json()["detail"] and lab.subject in r.json()["detail"]
    )

    # electrodes whose channel names are no registered site's electrode
    lab.electrodes = [f"ch-{i}" for i in range(len(lab.site_ids))]
    path = write_rich_nwb(tmp_path / "nc.nwb", lab, rec, neuroconv=True)
    r = upload(client, auth, lab.sid, {"file": path})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "map to no registered site" in detail, r.text
    assert "unit 'u0'" in detail and "electrode 'ch-0' of group 'A'" in detail
    assert row_counts(db_session) == before
    stored = client.get(f"{API}/sessions/{lab.sid}", headers=auth("viewer")).json()
    assert not stored["has_data"] and not stored["ingest"] and stored["session_start_time"] is None
