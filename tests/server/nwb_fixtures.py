"""A lab registered through the API with real images in the store, and rich NWB files to upload.

(Holds no tests; shared by tests/server/test_nwb_*.py.)
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from itloop.settings import Settings
from itloop.storage import get_store
from server.images.png import encode_png
from server.images.service import put_pixels
from server.lab.tables import Site
from server.modeling.tables import ModelVersion

EST = timezone(timedelta(hours=-5))
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=EST)


@dataclass
class ApiLab:
    subject: str
    array: str
    site_ids: list[str]
    electrodes: list[str]
    images: list[str]  # sha256, clean first, the perturbed one last
    pixels: dict[str, np.ndarray]  # sha256 -> (H, W, 3) uint8
    perturbed: dict[str, Any]
    sid: str


def api_lab(
    client: Any,
    auth: Any,
    db: Session,
    settings: Settings,
    *,
    n_sites: int = 4,
    n_images: int = 12,
    size: int = 16,
    subject_fields: dict[str, Any] | None = None,
    seed: int = 0,
) -> ApiLab:
    """Subject, array and sites through the API; a clean set through the API; one perturbed twin with
    full lineage (model version, site, epsilon, direction, seed, predicted change, achieved L2)."""
    tag = uuid.uuid4().hex[:8]
    subject, array = f"monkey-{tag}", "A"
    exp = auth("experimenter")
    r = client.post("/api/v1/subjects", json={"name": subject, **(subject_fields or {})}, headers=exp)
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/arrays",
        json={
            "name": array,
            "subject": subject,
            "region": "IT",
            "device": "Utah array 96ch",
            "manufacturer": "Blackrock Microsystems",
            "description": "chronic 10x10 Utah array over aIT",
        },
        headers=exp,
    )
    assert r.status_code == 201, r.text
    site_ids = [f"{tag}-A-{i:03d}" for i in range(n_sites)]
    electrodes = [f"elec{i + 1}" for i in range(n_sites)]
    r = client.post(
        "/api/v1/sites",
        json=[
            {
                "site_id": s,
                "array": array,
                "subject": subject,
                "electrode": e,
                "x": float(i),
                "y": 0.5,
                "z": -1.0,
            }
            for i, (s, e) in enumerate(zip(site_ids, electrodes, strict=True))
        ],
        headers=exp,
    )
    assert r.status_code == 201, r.text
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, size=(n_images - 1, size, size, 3), dtype=np.uint8)
    files = [
        ("files", (f"c{i:03d}.png", io.BytesIO(encode_png(im)), "image/png")) for i, im in enumerate(clean)
    ]
    r = client.post("/api/v1/image-sets", data={"name": f"clean-{tag}"}, files=files, headers=exp)
    assert r.status_code in (200, 201), r.text
    shas = [hashlib.sha256(encode_png(im)).hexdigest() for im in clean]
    assert sorted(shas) == sorted(x["sha256"] for x in r.json()["images"])
    pixels = {sha: im for sha, im in zip(shas, clean, strict=True)}
    store = get_store(settings.resolved_store_url)
    version = ModelVersion(
        version=f"mv-{tag}", backbone="small_cnn", layer="layer3", artifact_key=f"models/{tag}.pt"
    )
    db.add(version)
    db.flush()
    site_pk = db.query(Site.id).filter(Site.site_id == site_ids[0]).scalar()
    twin = np.clip(clean[0].astype(np.int16) + rng.integers(-3, 4, size=clean[0].shape), 0, 255).astype(
        np.uint8
    )
    lineage = {
        "model_version_id": version.id,
        "site_pk": site_pk,
        "epsilon": 1.0,
        "direction": "up",
        "seed": 123456789012,
        "predicted_change": 4.25,
        "achieved_l2": 0.987,
    }
    image = put_pixels(
        session=db, store=store, pixels=twin, kind="perturbed", parent_id=_image_pk(db, shas[0]), **lineage
    )
    db.commit()
    pixels[image.sha256] = twin
    perturbed = {
        **lineage,
        "model_version": version.version,
        "site_id": site_ids[0],
        "parent_sha256": shas[0],
        "sha256": image.sha256,
    }
    return ApiLab(subject, array, site_ids, electrodes, [*shas, image.sha256], pixels, perturbed, f"s-{tag}")


def _image_pk(db: Session, sha: str) -> int:
    from server.images.tables import Image

    return int(db.query(Image.id).filter(Image.sha256 == sha).scalar())


@dataclass
class Recording:
    trains: list[np.ndarray]  # per site of the lab, sorted seconds
    onsets: np.ndarray
    stops: np.ndarray
    images: list[str]
    event_ids: list[str]


def block_features(pixels: np.ndarray, blocks: int = 4) -> np.ndarray:
    """Mean grey level of each of blocks x blocks tiles of an (H, W, 3) uint8 image, in [0, 1]."""
    grey = pixels.astype(np.float64).mean(axis=2) / 255.0
    h, w = grey.shape
    return grey.reshape(blocks, h // blocks, blocks, w // blocks).mean(axis=(1, 3)).ravel()


def record(lab: ApiLab, *, n_pres: int = 60, seed: int = 1, weights: np.ndarray | None = None) -> Recording:
    """Presentations of the lab's images and Poisson spikes; with ``weights`` (n_sites, 16) a site's
    rate in 70-170 ms is linear in the image's :func:`block_features` (for predictivity tests)."""
    rng = np.random.default_rng(seed)
    onsets = np.round(1.0 + 0.4 * np.arange(n_pres) + rng.uniform(0, 0.01, n_pres), 6)
    stops = np.round(onsets + rng.uniform(0.09, 0.12, n_pres), 6)  # measured: no two alike
    images = [lab.images[i % len(lab.images)] for i in range(n_pres)]
    trains = []
    for j in range(len(lab.site_ids)):
        t = [rng.uniform(0.5, onsets[-1] + 1.0, rng.poisson(5 * onsets[-1]))]
        if weights is not None:
            for k, sha in enumerate(images):
                x = block_features(lab.pixels[sha])
                rate = max(0.0, 100.0 + float(weights[j] @ (x - 0.5)))
                t.append(onsets[k] + rng.uniform(0.07, 0.17, rng.poisson(rate * 0.1)))
        trains.append(np.sort(np.concatenate(t)))
    return Recording(trains, onsets, stops, images, [f"ev-{i:04d}" for i in range(n_pres)])


def write_rich_nwb(
    path: Path,
    lab: ApiLab,
    rec: Recording,
    *,
    neuroconv: bool = False,
    with_subject: bool = True,
    table_name: str = "presentations",
) -> Path:
    """A pynwb file with everything a lab's file carries: subject (sex M, age P7Y, 9 kg), experimenter,
    institution, lab, keywords, a Blackrock device, electrodes with x/y/z and location aIT, a start
    time at 09:00-05:00, measured stop times. ``neuroconv=True`` writes units as NeuroConv and
    SpikeInterface do: tied to electrodes (channel_name), a unit_name column, no site_id."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    nwb = NWBFile(
        session_description="RSVP of clean and perturbed images, aIT Utah array",
        identifier=str(uuid.uuid4()),
        session_start_time=START,
        experimenter=["Doe, Jane", "Roe, Richard"],
        institution="Example University",
        lab="DiCarlo-style lab",
        keywords=["IT cortex", "adversarial", "macaque"],
        subject=Subject(
            subject_id=lab.subject,
            species="Macaca mulatta",
            sex="M",
            age="P7Y",
            weight="9 kg",
            strain="Indian origin",
            description="adult male rhesus",
        )
        if with_subject
        else None,
    )
    device = nwb.create_device(
        name="Blackrock Cerebus", description="128-channel acquisition", manufacturer="Blackrock Microsystems"
    )
    group = nwb.create_electrode_group(
        name=lab.array, description="Utah array A", location="aIT", device=device
    )
    if neuroconv:
        nwb.add_electrode_column(name="channel_name", description="channel name")
    else:
        nwb.add_electrode_column(name="site_id", description="itloop site")
    for i, (sid, elec) in enumerate(zip(lab.site_ids, lab.electrodes, strict=True)):
        extra = {"channel_name": elec} if neuroconv else {"site_id": sid}
        nwb.add_electrode(group=group, location="aIT", x=10.0 + i, y=-2.5, z=31.25 - i, **extra)
    nwb.units = Units(name="units", description="sorted units", resolution=1 / 30000)
    if neuroconv:
        nwb.add_unit_column(name="unit_name", description="unit name")
    else:
        nwb.add_unit_column(name="site_id", description="itloop site")
    for i, (sid, train) in enumerate(zip(lab.site_ids, rec.trains, strict=True)):
        extra = {"unit_name": f"u{i}"} if neuroconv else {"site_id": sid}
        nwb.add_unit(spike_times=train, electrodes=[i], **extra)
    table = TimeIntervals(name=table_name, description="image presentations")
    table.add_column(name="image_sha256", description="sha256 of the PNG")
    table.add_column(name="event_id", description="rig event id")
    for k in range(len(rec.onsets)):
        table.add_row(
            start_time=float(rec.onsets[k]),
            stop_time=float(rec.stops[k]),
            image_sha256=rec.images[k],
            event_id=rec.event_ids[k],
        )
    if table_name == "trials":
        nwb.trials = table
    else:
        nwb.add_time_intervals(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io_:
        io_.write(nwb)
    return path
