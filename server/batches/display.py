"""What the screen must do with a batch: display geometry in the manifest, and a calibration pattern.

Why: a file hash proves the file, not the screen. At epsilon 1 on a 224x224 image a perturbation
is under one grey level per pixel, so a screen that rescales the image, dithers it or maps two
neighbouring grey levels onto one erases it silently. The manifest therefore states the display
the batch was made for (screen pixels, refresh rate, degrees of visual angle of the images, from
the rig's registered ``screen``), and every bundle carries a small calibration pattern whose
pixels the rig can read back from its own frame buffer and compare (``docs/rig-client.md``).

The pattern (256 x 256, 8-bit RGB, grey) has four bands of 64 rows:

- a ramp: column x has grey level x (every level once, single-level steps);
- sixteen 16-pixel blocks at levels 120-135 (single-level steps where perturbations live; a
  photometer must read sixteen distinct, increasing luminances);
- a one-pixel checkerboard of 0 and 255 (any resampling turns it into uniform grey or moire);
- one-pixel columns alternating 127 and 128 (dithering or a lookup table that merges
  neighbouring levels erases it).

The PNG is committed (``calibration.png``) rather than encoded at run time, so its bytes and hash
do not depend on the zlib a server happens to have; :func:`pattern_pixels` regenerates its
pixels and a test checks that the two agree.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PATTERN_FILE = Path(__file__).with_name("calibration.png")
BUNDLE_PATH = "calibration/pattern.png"
SIZE = 256


def pattern_pixels() -> np.ndarray:
    """The calibration pattern as a (256, 256, 3) uint8 array (see the module docstring)."""
    img = np.zeros((SIZE, SIZE), dtype=np.uint8)
    x = np.arange(SIZE)
    img[0:64, :] = x[None, :]
    img[64:128, :] = (120 + x // 16)[None, :]
    yy, xx = np.mgrid[0:64, 0:SIZE]
    img[128:192, :] = np.where((yy + xx) % 2 == 0, 0, 255)
    img[192:256, :] = np.where(x % 2 == 0, 127, 128)[None, :]
    return np.repeat(img[:, :, None], 3, axis=2)


@lru_cache(maxsize=1)
def pattern_bytes() -> bytes:
    return PATTERN_FILE.read_bytes()


def pattern_ref() -> dict[str, Any]:
    """The manifest's description of the pattern: where the bundle has it, its hash and size."""
    data = pattern_bytes()
    return {
        "path": BUNDLE_PATH,
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": SIZE,
        "height": SIZE,
        "bytes": len(data),
    }


def _pair(value: Any) -> list[int] | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1:
        return [int(value), int(value)]
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return [int(value[0]), int(value[1])]
    return None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def geometry(screen: dict[str, Any], image_px: list[int] | None) -> dict[str, Any]:
    """The manifest's ``display`` block from the rig's registered ``screen`` and the images' size.

    Recognised ``screen`` keys: ``size_px`` ([w, h] or one number), ``refresh_hz``,
    ``distance_cm``, ``width_cm`` (visible width of the screen), ``deg_per_px``. Degrees are
    computed exactly (``2 atan(size / 2 distance)``) from width and distance when given, else from
    ``deg_per_px``; unknown values are null, never guessed.
    """
    screen = screen or {}
    size = _pair(screen.get("size_px"))
    refresh = _number(screen.get("refresh_hz"))
    distance = _number(screen.get("distance_cm"))
    width_cm = _number(screen.get("width_cm"))
    deg_per_px = _number(screen.get("deg_per_px"))
    image_deg = None
    if image_px is not None:
        if size and width_cm and distance:
            cm_per_px = width_cm / size[0]
            image_deg = [
                round(math.degrees(2 * math.atan(n * cm_per_px / (2 * distance))), 4) for n in image_px
            ]
            deg_per_px = deg_per_px or round(math.degrees(2 * math.atan(cm_per_px / (2 * distance))), 6)
        elif deg_per_px:
            image_deg = [round(n * deg_per_px, 4) for n in image_px]
    return {
        "screen_px": size,
        "refresh_hz": refresh,
        "frame_ms": round(1000.0 / refresh, 6) if refresh else None,
        "distance_cm": distance,
        "width_cm": width_cm,
        "deg_per_px": deg_per_px,
        "image_px": image_px,
        "image_deg": image_deg,
        "scaling": "none: one image pixel is one screen pixel",
        "gamma": "pixel values are shown as served: no colour management, no gamma correction, no dithering",
        "calibration": pattern_ref(),
    }
