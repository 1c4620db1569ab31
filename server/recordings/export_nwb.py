"""The NWB 2 export of one session: what was uploaded or registered, written back, DANDI-ready.

Written back: the session (start time with its offset, description, experimenter, institution,
lab, keywords), the subject (species, sex, age or date of birth, weight, strain), devices,
electrode groups and electrodes (x/y/z, location), units with their resolution and site ids,
presentations with their own start and stop times, the stimulus images themselves
(``stimulus_template``: an ``Images`` container of ``RGBImage``, gzip-compressed, one per distinct
image; ``stimulus``: an ``IndexSeries`` of the presentations pointing into it) and each image's
lineage as a ``DynamicTable``. ``identifier`` is a fresh UUID per export, as DANDI requires.

Precedence, field by field: what the NWB upload said, then what the session was registered with,
then the lab inventory (subject, array, site). The layout is the one the upload accepts, so an
export uploaded again is recognised as the same data (docs/nwb-and-brainscore.md).
"""

from __future__ import annotations

import logging
import math
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.storage import ObjectStore, image_key
from server.errors import Conflict
from server.images.png import decode_png
from server.lab.tables import Array, Site, Subject
from server.recordings.lineage import image_lineage
from server.recordings.queries import load_trains
from server.recordings.tables import Presentation, RecordingSession

log = logging.getLogger(__name__)

DEFAULT_STIM_DURATION_S = 0.1
SUBJECT_KEYS = ("species", "sex", "age", "date_of_birth", "weight", "strain", "description")


def require_data(recording: RecordingSession) -> None:
    if recording.upload_sha256 is None:
        raise Conflict(f"session {recording.session_id!r} has no spike data yet; upload it first")


def _file(recording: RecordingSession) -> dict[str, Any]:
    return dict((recording.acquisition or {}).get("file") or {})


def subject_fields(subject: Subject | None, recording: RecordingSession) -> dict[str, str]:
    """Registered subject < the session's day values (age, weight) < the upload's Subject."""
    out = {k: "" for k in SUBJECT_KEYS}
    if subject is not None:
        out.update(
            species=subject.species,
            sex=subject.sex,
            age=subject.age,
            date_of_birth=subject.date_of_birth,
            weight=subject.weight,
            strain=subject.strain,
            description=subject.notes,
        )
    for layer in ((recording.acquisition or {}).get("subject") or {}, _file(recording).get("subject") or {}):
        out.update({k: v for k, v in layer.items() if k in SUBJECT_KEYS and v})
    return out


def _nwb_subject(subject: Subject | None, recording: RecordingSession) -> Any:
    from pynwb.file import Subject as NWBSubject

    f = subject_fields(subject, recording)
    kwargs: dict[str, Any] = {"subject_id": subject.name if subject else "unknown"}
    for key in ("species", "sex", "age", "weight", "strain", "description"):
        if f[key]:
            kwargs[key] = f[key]
    if f["date_of_birth"]:
        kwargs["date_of_birth"] = datetime.fromisoformat(f["date_of_birth"])
    return NWBSubject(**kwargs)


def _start_time(recording: RecordingSession) -> datetime:
    if recording.session_start_time:
        return datetime.fromisoformat(recording.session_start_time)
    created = recording.created_at
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _inventory(session: Session, site_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = session.execute(
        select(Site, Array).join(Array, Array.id == Site.array_id).where(Site.site_id.in_(site_ids))
    ).all()
    return {site.site_id: {"site": site, "array": array} for site, array in rows}


class _Electrodes:
    """Devices, electrode groups and one electrode per site, built in site order."""

    def __init__(self, nwb: Any, recording: RecordingSession) -> None:
        meta = _file(recording)
        self.nwb = nwb
        self.file_devices = {d["name"]: d for d in meta.get("devices", [])}
        self.file_groups = {g["name"]: g for g in meta.get("electrode_groups", [])}
        self.file_electrodes: dict[str, dict[str, Any]] = meta.get("electrodes", {})
        self.devices: dict[str, Any] = {}
        self.groups: dict[str, Any] = {}

    def device(self, name: str, description: str, manufacturer: str) -> Any:
        if name not in self.devices:
            d = self.file_devices.get(name, {})
            self.devices[name] = self.nwb.create_device(
                name=name,
                description=d.get("description") or description,
                manufacturer=d.get("manufacturer") or manufacturer or None,
            )
        return self.devices[name]

    def group(self, name: str, array: Array | None) -> Any:
        if name in self.groups:
            return self.groups[name]
        g = self.file_groups.get(name)
        if g is not None:
            device = self.device(g["device"] or f"{name}-device", "recording device", "")
            description, location = g["description"] or f"electrode group {name}", g["location"]
        else:
            device_name = (array.device if array else "") or f"{name}-device"
            device = self.device(
                device_name,
                (array.description if array else "") or f"chronic array {name}",
                array.manufacturer if array else "",
            )
            description = (array.description if array else "") or f"chronic array {name}"
            location = (array.region if array else "") or "unknown"
        self.groups[name] = self.nwb.create_electrode_group(
            name=name, description=description, location=location or "unknown", device=device
        )
        return self.groups[name]

    def rows(self, site_ids: list[str], inv: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for sid in site_ids:
            site: Site | None = inv.get(sid, {}).get("site")
            array: Array | None = inv.get(sid, {}).get("array")
            fe = self.file_electrodes.get(sid, {})
            group = fe.get("group") or (array.name if array else "unknown")
            pos = {a: fe[a] if fe.get(a) is not None else getattr(site, a, None) for a in "xyz"}
            out.append(
                {
                    "group": self.group(group, array),
                    "location": fe.get("location")
                    or (site.location if site else "")
                    or (array.region if array else "")
                    or "unknown",
                    "label": fe.get("label") or (site.electrode if site else "") or sid,
                    "site_id": sid,
                    "array": array.name if array else "",
                    "unit_kind": site.unit if site else "",
                    **pos,
                }
            )
        return out


def _add_electrodes(nwb: Any, rows: list[dict[str, Any]]) -> None:
    for col, desc in (
        ("site_id", "itloop site id"),
        ("array", "array name in the lab inventory"),
        ("unit_kind", "mua or unit"),
        ("label", "electrode label (channel name) in the recording"),
    ):
        nwb.add_electrode_column(name=col, description=desc)
    positioned = any(r[a] is not None for r in rows for a in "xyz")
    for r in rows:
        extra = {a: (math.nan if r[a] is None else float(r[a])) for a in "xyz"} if positioned else {}
        nwb.add_electrode(
            group=r["group"],
            location=r["location"],
            site_id=r["site_id"],
            array=r["array"],
            unit_kind=r["unit_kind"],
            label=r["label"],
            **extra,
        )


def _presentations(session: Session, recording: RecordingSession) -> list[Any]:
    return list(
        session.execute(
            select(
                Presentation.event_id,
                Presentation.image_id,
                Presentation.onset_s,
                Presentation.stop_s,
                Presentation.fixation_ok,
            )
            .where(Presentation.session_pk == recording.id)
            .order_by(Presentation.onset_s, Presentation.event_id)
        ).all()
    )


def _add_presentations(nwb: Any, pres: list[Any], sha_of: dict[int, str]) -> None:
    from pynwb.epoch import TimeIntervals

    measured = [p[3] - p[2] for p in pres if p[3] is not None and p[3] > p[2]]
    nominal = float(np.median(measured)) if measured else DEFAULT_STIM_DURATION_S
    table = TimeIntervals(name="presentations", description="image presentations on the session clock")
    table.add_column(name="image_sha256", description="SHA-256 of the PNG shown")
    table.add_column(name="event_id", description="rig event id")
    table.add_column(name="fixation_ok", description="fixation held through the presentation")
    table.add_column(
        name="stop_time_measured",
        description="true where stop_time is the uploaded one; false where the upload gave none and "
        "stop_time is start_time plus the session's median measured duration (or 0.1 s)",
    )
    for eid, image_id, onset, stop, fix in pres:
        known = stop is not None and stop > onset
        table.add_row(
            start_time=float(onset),
            stop_time=float(stop) if known else float(onset) + nominal,
            image_sha256=sha_of[image_id],
            event_id=eid,
            fixation_ok=bool(fix),
            stop_time_measured=bool(known),
        )
    nwb.add_time_intervals(table)


def _add_images(
    nwb: Any, store: ObjectStore | None, pres: list[Any], lineage: dict[int, dict[str, Any]]
) -> dict[int, int]:
    """Embed each distinct image once; an IndexSeries of the presentations points into them.

    Returns the index of every embedded image by image id. An image whose object is missing from
    the store is listed in the lineage table with image_index -1 and left out of the series.
    """
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb.base import ImageReferences, Images
    from pynwb.image import IndexSeries, RGBImage

    if store is None:
        return {}
    images: list[Any] = []
    index_of: dict[int, int] = {}
    for image_id in sorted({int(p[1]) for p in pres}):
        sha = lineage[image_id]["image_sha256"]
        try:
            pixels = decode_png(store.get(image_key(sha)))
        except KeyError:
            log.warning("image %s is registered but missing from the store: not embedded", sha)
            continue
        index_of[image_id] = len(images)
        images.append(
            RGBImage(
                name=sha,
                data=H5DataIO(np.ascontiguousarray(pixels.transpose(1, 2, 0)), compression="gzip"),
                description=f"{lineage[image_id]['kind'] or 'image'} {sha} as served to the rig (PNG pixels)",
            )
        )
    if not images:
        return index_of
    container = Images(
        name="stimulus_images",
        images=images,
        description="every distinct image shown in this session, named by the SHA-256 of its PNG",
        order_of_images=ImageReferences(name="order_of_images", data=images),
    )
    nwb.add_stimulus_template(container)
    shown = [p for p in pres if int(p[1]) in index_of]
    nwb.add_stimulus(
        IndexSeries(
            name="presentation_images",
            data=np.asarray([index_of[int(p[1])] for p in shown], dtype=np.uint32),
            indexed_images=container,
            unit="N/A",
            timestamps=np.asarray([p[2] for p in shown], dtype=np.float64),
            description="which image of stimulus_images was shown at each presentation onset",
        )
    )
    return index_of


def _add_lineage(nwb: Any, lineage: dict[int, dict[str, Any]], index_of: dict[int, int]) -> None:
    from hdmf.common import DynamicTable

    table = DynamicTable(
        name="image_lineage",
        description="where every image shown came from: parent, model version, perturbed site, epsilon, "
        "direction, seed, predicted change and achieved L2 (empty / NaN / -1 for clean images)",
    )
    columns = (
        ("image_sha256", "SHA-256 of the PNG"),
        ("image_index", "index into stimulus_template/stimulus_images, -1 when not embedded"),
        ("kind", "clean, reference, perturbed, targeted or random"),
        ("category", "image category of the clean set"),
        ("parent_sha256", "the clean image this one perturbs"),
        ("model_version", "model version that synthesised it"),
        ("perturbed_site", "site whose response it was made to change"),
        ("epsilon", "L2 budget (pixel units in [0, 1])"),
        ("direction", "up, down, targeted or random"),
        ("seed", "synthesis seed"),
        ("predicted_change", "the model's predicted change of the site's rate (Hz)"),
        ("achieved_l2", "achieved L2 distance from the parent after 8-bit rounding"),
    )
    for name, desc in columns:
        table.add_column(name=name, description=desc)
    for image_id in sorted(lineage):
        x = lineage[image_id]
        table.add_row(
            image_sha256=x["image_sha256"],
            image_index=index_of.get(image_id, -1),
            kind=x["kind"],
            category=x["category"],
            parent_sha256=x["parent_sha256"],
            model_version=x["model_version"],
            perturbed_site=x["perturbed_site"],
            epsilon=x["epsilon"],
            direction=x["direction"],
            seed=x["seed"],
            predicted_change=x["predicted_change"],
            achieved_l2=x["achieved_l2"],
        )
    nwb.add_stimulus(table)


def build_nwb(*, session: Session, recording: RecordingSession, store: ObjectStore | None = None) -> bytes:
    """The session as an NWB file (bytes); ``store`` supplies the images to embed (None: no images)."""
    require_data(recording)
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.misc import Units

    subject = session.get(Subject, recording.subject_id)
    site_ids, _, trains = load_trains(session=session, session_pk=recording.id)
    pres = _presentations(session, recording)
    lineage = image_lineage(session, sorted({int(p[1]) for p in pres}))
    inv = _inventory(session, site_ids)
    nwb = NWBFile(
        session_description=recording.description
        or f"itloop session {recording.session_id} (day {recording.day}): RSVP of clean and perturbed "
        "images while recording from IT sites",
        identifier=str(uuid.uuid4()),
        session_id=recording.session_id,
        session_start_time=_start_time(recording),
        experiment_description=_file(recording).get("experiment_description")
        or "Closed-loop measurement of the adversarial sensitivity of macaque IT sites (itloop): clean "
        "images and their L2-bounded perturbations (twins) shown in RSVP while recording",
        experimenter=list(recording.experimenter or []) or None,
        institution=recording.institution or None,
        lab=recording.lab or None,
        keywords=list(recording.keywords or []) or None,
        subject=_nwb_subject(subject, recording),
    )
    electrodes = _Electrodes(nwb, recording)
    _add_electrodes(nwb, electrodes.rows(site_ids, inv))
    resolution = _file(recording).get("units_resolution")
    nwb.units = Units(
        name="units",
        description="one unit per itloop site (several sorted units of a site are merged)",
        resolution=float(resolution) if resolution else -1.0,
    )
    nwb.add_unit_column(name="site_id", description="itloop site id (stable across days)")
    nwb.add_unit_column(name="electrode_name", description="electrode label from the lab inventory")
    nwb.add_unit_column(name="region", description="brain region of the array")
    for k, (sid, train) in enumerate(zip(site_ids, trains, strict=True)):
        info = inv.get(sid, {})
        nwb.add_unit(
            spike_times=np.asarray(train, dtype=np.float64),
            electrodes=[k],
            site_id=sid,
            electrode_name=info["site"].electrode if info else "",
            region=info["array"].region if info else "",
        )
    _add_presentations(nwb, pres, {i: x["image_sha256"] for i, x in lineage.items()})
    index_of = _add_images(nwb, store, pres, lineage)
    _add_lineage(nwb, lineage, index_of)
    with tempfile.TemporaryDirectory(prefix="itloop-nwb-") as tmp:
        path = Path(tmp) / "export.nwb"
        with NWBHDF5IO(str(path), "w") as io_:
            io_.write(nwb)
        return path.read_bytes()
