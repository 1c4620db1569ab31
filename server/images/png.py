"""Deterministic PNG encoding and strict decoding.

An image's identity is the SHA-256 of its PNG bytes, so the same pixels must always
encode to the same bytes: no text chunks, no timestamps, a fixed compression level.
Uploads are decoded strictly so that nothing but a real RGB(A) or greyscale PNG is stored.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image as PILImage

from itloop.errors import InvalidUpload

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPRESS_LEVEL = 6
# Checked from the PNG header before any pixel is decoded (a PNG bomb is a few hundred kB of
# compressed zeros declaring gigapixels). Decoding costs up to ~16 bytes per pixel (RGBA, the RGB
# copy, the channel-first copy, the canonical re-encode), so 16.8 Mpx stays under 256 MB; stimuli
# are far smaller (the models see 224x224).
MAX_PIXELS = 4096 * 4096
ACCEPTED_MODES = {"RGB": "RGB", "RGBA": "RGBA", "L": "greyscale", "LA": "greyscale with alpha"}


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode uint8 pixels of shape (3, H, W) or (H, W, 3) as a PNG with no metadata.

    Parameters
    ----------
    pixels : ndarray of shape (3, H, W) or (H, W, 3), dtype uint8
        Channel-first arrays come from torch; channel-last from PIL / matplotlib.

    Returns
    -------
    bytes
        The same bytes for the same pixels, on every machine with the same zlib.
    """
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise InvalidUpload(f"pixels must be uint8 (quantise before encoding), got {arr.dtype}")
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise InvalidUpload(f"pixels must have shape (3, H, W) or (H, W, 3), got {arr.shape}")
    if arr.shape[0] == 3:  # channel-first wins when ambiguous, as torch writes it
        arr = np.moveaxis(arr, 0, -1)
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(arr), mode="RGB").save(
        buf, format="PNG", compress_level=COMPRESS_LEVEL, optimize=False
    )
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG to uint8 pixels of shape (3, H, W), refusing anything that is not a valid PNG.

    Alpha is dropped (the rig shows opaque images) and greyscale is repeated over three
    channels. Palette, 16-bit, truncated or oversized images raise ``InvalidUpload``.
    """
    if not data:
        raise InvalidUpload("empty file: expected a PNG image")
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidUpload("not a PNG file: the PNG signature is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
            if img.format != "PNG":
                raise InvalidUpload(f"not a PNG file (Pillow reads it as {img.format})")
            if img.width * img.height > MAX_PIXELS:
                raise InvalidUpload(
                    f"image too large: {img.width}x{img.height} pixels, at most {MAX_PIXELS:,} "
                    "pixels (e.g. 4096x4096) are accepted"
                )
            mode = img.mode
            if mode not in ACCEPTED_MODES:
                raise InvalidUpload(
                    f"unsupported PNG mode {mode!r}: expected 8-bit RGB, RGBA or greyscale "
                    "(convert palette or 16-bit images first)"
                )
            img.load()
    except InvalidUpload:
        raise
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombWarning) as exc:
        raise InvalidUpload(f"corrupt or truncated PNG: {exc}") from exc
    rgb = img.convert("RGB") if mode != "RGB" else img
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
