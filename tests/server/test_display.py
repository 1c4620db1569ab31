"""The manifest's display block and the calibration pattern every bundle carries."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session

from itloop.settings import Settings
from itloop.storage import ObjectStore, open_store
from server.batches import display, service
from server.lab import service as lab
from tests.server.test_batches import make_images, uid


def test_committed_pattern_is_the_documented_one() -> None:
    data = display.pattern_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    assert pixels.dtype == np.uint8 and pixels.shape == (256, 256, 3)
    assert np.array_equal(pixels, display.pattern_pixels())
    grey = pixels[:, :, 0]
    assert list(grey[0]) == list(range(256))  # every grey level once
    assert sorted(set(grey[64])) == list(range(120, 136))  # single-level steps at mid-grey
    assert set(np.unique(grey[128:192])) == {0, 255} and grey[128, 0] != grey[128, 1] != grey[129, 1]
    assert set(np.unique(grey[192:])) == {127, 128}
    ref = display.pattern_ref()
    assert ref["sha256"] == hashlib.sha256(data).hexdigest() and ref["bytes"] == len(data)


def test_geometry_from_the_rig_screen() -> None:
    g = display.geometry(
        {"size_px": [1920, 1080], "refresh_hz": 120, "distance_cm": 57, "width_cm": 52.7}, [224, 224]
    )
    assert g["screen_px"] == [1920, 1080] and g["refresh_hz"] == 120
    assert g["frame_ms"] == pytest.approx(8.3333, abs=1e-4)
    # 224 px of 52.7/1920 cm = 6.148 cm at 57 cm: 2 atan(3.074 / 57) = 6.174 degrees
    assert g["image_deg"] == [pytest.approx(6.1743, abs=1e-3)] * 2
    assert g["deg_per_px"] == pytest.approx(0.02759, abs=1e-4)
    assert display.geometry({"deg_per_px": 0.03}, [224, 224])["image_deg"] == [6.72, 6.72]
    unknown = display.geometry({}, None)
    assert unknown["refresh_hz"] is None and unknown["image_deg"] is None and unknown["calibration"]
    assert display.geometry({"refresh_hz": "fast", "size_px": "big"}, [8, 8])["refresh_hz"] is None
    odd = display.geometry({"size_px": [0, 0], "width_cm": 50, "distance_cm": 57}, [8, 8])
    assert odd["screen_px"] is None and odd["image_deg"] is None  # never a division by zero


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_store(settings.resolved_store_url)


def test_published_manifest_states_the_display(db_session: Session, store: ObjectStore) -> None:
    rig_id = f"rig-{uid()}"
    lab.create_subject(session=db_session, name="monkey-a")
    lab.create_rig(
        session=db_session,
        rig_id=rig_id,
        subject="monkey-a",
        screen={"size_px": [1920, 1080], "refresh_hz": 60, "deg_per_px": 0.05},
    )
    images = make_images(db_session, store, 2)
    batch = service.create_batch(
        session=db_session,
        rig_id=rig_id,
        batch_id=f"{rig_id}-d1",
        day=1,
        model_version_id=None,
        images=[(im, "clean") for im in images],
        sequence=[
            {"seq": k, "image_id": images[k % 2].id, "trial": 0, "on_ms": 100, "off_ms": 100}
            for k in range(4)
        ],
    )
    service.publish(session=db_session, batch=batch, store=store)
    manifest = service.get_manifest(session=db_session, batch_id=batch.batch_id)
    d = manifest["display"]
    assert d["refresh_hz"] == 60 and d["image_px"] == [8, 8] and d["image_deg"] == [0.4, 0.4]
    assert d["calibration"]["path"] == "calibration/pattern.png"
