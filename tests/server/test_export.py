"""Exports: NWB round-trips through pynwb and re-upload; the assembly opens with xarray."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import xarray as xr
from sqlalchemy.orm import Session

from tests.server.test_recordings_helpers import (
    brute_force_counts,
    create_session,
    make_lab,
    row_counts,
    synth,
    upload,
    write_csv,
)


def test_nwb_export_round_trips(client, auth, db_session: Session, tmp_path: Path) -> None:
    from pynwb import NWBHDF5IO

    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=21)
    first = upload(client, auth, lab.sid, write_csv(tmp_path, data)).json()
    r = client.get(f"/api/v1/sessions/{lab.sid}/export.nwb", headers=auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-nwb"
    path = tmp_path / "export.nwb"
    path.write_bytes(r.content)
    with NWBHDF5IO(str(path), "r") as io_:
        nwb = io_.read()
        units = nwb.units.to_dataframe()
        assert sorted(units["site_id"]) == sorted(lab.site_ids)
        for sid, times in zip(units["site_id"], units["spike_times"], strict=True):
            np.testing.assert_array_equal(times, np.sort(data.times[data.site == sid]))
        pres = nwb.intervals["presentations"].to_dataframe().sort_values("event_id")
        order = np.argsort(data.event_ids)
        assert list(pres["event_id"]) == [data.event_ids[i] for i in order]
        assert list(pres["image_sha256"]) == [data.images[i] for i in order]
        np.testing.assert_array_equal(pres["start_time"].to_numpy(), data.onsets[order])
        np.testing.assert_array_equal(pres["fixation_ok"].to_numpy().astype(bool), data.fixation[order])
        assert "electrode_name" in units.columns and len(nwb.electrodes) == 6
    before = row_counts(db_session)
    again = upload(client, auth, lab.sid, {"file": path})
    assert again.status_code == 200, again.text
    assert again.json() == {**first, "repeated": True}
    assert row_counts(db_session) == before


def test_assembly_export_opens_with_xarray(client, auth, db_session: Session, tmp_path: Path) -> None:
    lab = make_lab(db_session)
    create_session(client, auth, lab)
    data = synth(lab, seed=22)
    upload(client, auth, lab.sid, write_csv(tmp_path, data))
    r = client.get(f"/api/v1/sessions/{lab.sid}/responses.nc", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    da = xr.open_dataarray(io.BytesIO(r.content), engine="scipy").load()
    assert da.dims == ("presentation", "neuroid", "time_bin") and da.shape == (40, 6, 1)
    for coord in (
        "image_id",
        "stimulus_id",
        "event_id",
        "onset_s",
        "fixation_ok",
        "repetition",
        "parent_sha256",
        "model_version",
        "perturbed_site",
        "epsilon",
        "direction",
        "seed",
        "kind",
        "predicted_change",
        "achieved_l2",
    ):
        assert da[coord].dims == ("presentation",), coord
    for coord in ("neuroid_id", "arr", "elec", "animal", "region"):
        assert da[coord].dims == ("neuroid",), coord
    assert da["time_bin_start"].dims == ("time_bin",)
    assert da["time_bin_start"].values.tolist() == [70.0] and da["time_bin_end"].values.tolist() == [170.0]
    assert list(da["neuroid_id"].values) == sorted(lab.site_ids)
    assert set(da["animal"].values) == {lab.subject} and set(da["region"].values) == {"IT"}
    expected = brute_force_counts(data, sorted(lab.site_ids), (70.0, 170.0)) / 0.1
    np.testing.assert_allclose(da.squeeze("time_bin").values, expected)
    perturbed = da["kind"].values == "perturbed"
    assert perturbed.any()
    assert set(da["parent_sha256"].values[perturbed]) == {lab.images[0]}
    assert set(da["epsilon"].values[perturbed]) == {2.0} and set(da["direction"].values[perturbed]) == {"up"}
    assert set(da["perturbed_site"].values[perturbed]) == {lab.site_ids[0]}
    assert np.isnan(da["epsilon"].values[~perturbed]).all()
    reps = da["repetition"].values[da["image_id"].values == lab.images[1]]
    assert sorted(reps.tolist()) == list(range(len(reps)))
    # another window is computed on the fly
    r = client.get(
        f"/api/v1/sessions/{lab.sid}/responses.nc",
        params={"window_start_ms": 0, "window_end_ms": 300},
        headers=auth("viewer"),
    )
    da2 = xr.open_dataarray(io.BytesIO(r.content), engine="scipy").load()
    expected = brute_force_counts(data, sorted(lab.site_ids), (0.0, 300.0)) / 0.3
    np.testing.assert_allclose(da2.values[:, :, 0], expected)
