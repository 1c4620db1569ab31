"""Timing in frames: a screen shows an image for a whole number of refreshes, never for "100 ms".

Why: ``core.wait(0.1)`` after a flip ends somewhere inside a frame and the next flip waits for the
following refresh, so durations timed in seconds come out a frame long at random. Counting flips
is exact. The manifest gives ``on_ms``/``off_ms``; :func:`frames` turns them into flips at the
rig's refresh rate and says when the two do not agree (100 ms at 144 Hz is 14.4 frames).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def frames(ms: float, refresh_hz: float, *, tolerance: float = 0.05) -> int:
    """Whole frames closest to ``ms`` at ``refresh_hz``; warns when that is off by > 5% of a frame."""
    if refresh_hz <= 0:
        raise ValueError(f"refresh rate must be positive, got {refresh_hz!r}")
    exact = ms * refresh_hz / 1000.0
    n = max(1, round(exact)) if ms > 0 else 0
    if abs(exact - n) > tolerance:
        log.warning(
            "%g ms is %.2f frames at %g Hz; showing %d frames (%.2f ms)",
            ms,
            exact,
            refresh_hz,
            n,
            n * 1000 / refresh_hz,
        )
    return n
