"""Brain-Score: brainio loads the assembly and the StimulusSet unchanged, and they pair by stimulus_id.

The responses are made linear in the images' pixels, so a ridge regression from the StimulusSet's
pixels to the assembly's responses predicts held-out images well, and only when each image is
paired with its own responses: a wrong pairing (shuffled) predicts nothing.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from itloop.settings import Settings
from tests.server.nwb_fixtures import api_lab, block_features, record, write_rich_nwb
from tests.server.test_recordings_helpers import upload

API = "/api/v1"


def _ridge_r(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2, folds: int = 4) -> np.ndarray:
    """Cross-validated ridge predictions; Pearson r per neuroid between predicted and measured."""
    n = len(x)
    pred = np.zeros_like(y)
    fold = np.arange(n) % folds
    for f in range(folds):
        tr, te = fold != f, fold == f
        xm, ym = x[tr].mean(0), y[tr].mean(0)
        a = x[tr] - xm
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y[tr] - ym))
        pred[te] = (x[te] - xm) @ w + ym
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    return (pc * yc).sum(0) / np.sqrt((pc**2).sum(0) * (yc**2).sum(0))


def test_brainio_loads_assembly_and_stimulus_set_and_they_pair_up(
    client: Any, auth: Any, db_session: Session, settings: Settings, tmp_path: Path
) -> None:
    from brainio.assemblies import NeuronRecordingAssembly
    from brainio.stimuli import StimulusSet

    lab = api_lab(client, auth, db_session, settings, n_sites=5, n_images=48, size=16, seed=3)
    weights = np.random.default_rng(4).normal(0, 400, size=(len(lab.site_ids), 16))
    rec = record(lab, n_pres=48 * 3, seed=5, weights=weights)
    r = client.post(
        f"{API}/sessions", json={"session_id": lab.sid, "subject": lab.subject}, headers=auth("experimenter")
    )
    assert r.status_code == 201, r.text
    assert (
        upload(client, auth, lab.sid, {"file": write_rich_nwb(tmp_path / "s.nwb", lab, rec)}).status_code
        == 200
    )

    viewer = auth("viewer")
    nc = tmp_path / "responses.nc"
    r = client.get(f"{API}/sessions/{lab.sid}/responses.nc", headers=viewer)
    assert r.status_code == 200, r.text
    nc.write_bytes(r.content)
    csv_r = client.get(f"{API}/sessions/{lab.sid}/stimulus_set.csv", headers=viewer)
    zip_r = client.get(f"{API}/sessions/{lab.sid}/stimulus_set.zip", headers=viewer)
    assert csv_r.status_code == 200 and zip_r.status_code == 200, (csv_r.text, zip_r.text[:200])
    assert zip_r.headers["x-content-sha1"] == hashlib.sha1(zip_r.content).hexdigest()
    (tmp_path / "stimulus_set.csv").write_bytes(csv_r.content)
    (tmp_path / "stimulus_set.zip").write_bytes(zip_r.content)
    images_dir = tmp_path / "stimuli"
    with zipfile.ZipFile(tmp_path / "stimulus_set.zip") as zf:
        zf.extractall(images_dir)  # what brainio's fetch does with a stimulus zip

    stimuli = StimulusSet.from_files(tmp_path / "stimulus_set.csv", images_dir)
    assert len(stimuli) == len(set(rec.images)) and set(stimuli["stimulus_id"]) == set(rec.images)
    for sid in stimuli["stimulus_id"]:  # each file is the image of that hash, as served
        assert hashlib.sha256(Path(stimuli.get_stimulus(sid)).read_bytes()).hexdigest() == sid
    twin = stimuli.set_index("stimulus_id").loc[lab.perturbed["sha256"]]
    assert (twin["predicted_change"], twin["achieved_l2"], twin["perturbed_site"]) == (
        4.25,
        0.987,
        lab.site_ids[0],
    )

    assembly = NeuronRecordingAssembly.from_files(
        nc, stimulus_set_identifier=f"itloop.{lab.sid}", stimulus_set=stimuli
    )
    assert set(assembly.dims) == {"presentation", "neuroid", "time_bin"}
    assert assembly["time_bin_start"].values.tolist() == [70.0]
    assert assembly["time_bin_end"].values.tolist() == [170.0]
    assert sorted(assembly["neuroid_id"].values.tolist()) == sorted(lab.site_ids)
    assert set(assembly["region"].values) == {"IT"} and set(assembly["animal"].values) == {lab.subject}
    assert sorted(set(assembly["repetition"].values.tolist())) == [0, 1, 2]
    # the merge put the StimulusSet's columns on each presentation by stimulus_id
    assert all(
        f == f"{s}.png"
        for s, f in zip(assembly["stimulus_id"].values, assembly["filename"].values, strict=True)
    )
    perturbed = assembly["stimulus_id"].values == lab.perturbed["sha256"]
    assert set(assembly["predicted_change"].values[perturbed]) == {4.25}
    assert set(assembly["achieved_l2"].values[perturbed]) == {0.987}
    assert set(assembly["seed"].values[perturbed]) == {"123456789012"}  # 63-bit seeds as text

    mean = assembly.squeeze("time_bin").multi_groupby(["stimulus_id"]).mean("presentation")
    mean = mean.transpose("stimulus_id", "neuroid")
    order = [str(s) for s in mean["stimulus_id"].values]
    x = np.stack(
        [block_features(np.asarray(PILImage.open(stimuli.get_stimulus(s)).convert("RGB"))) for s in order]
    )
    y = mean.values
    r_paired = _ridge_r(x, y)
    r_shuffled = _ridge_r(x[np.random.default_rng(0).permutation(len(x))], y)
    assert np.median(r_paired) > 0.6, r_paired
    assert np.median(r_shuffled) < 0.3, r_shuffled
