"""Spike counts per site per presentation in a window after onset, vectorised.

For a sorted train, the number of spikes in ``[onset + start, onset + end)`` is the
difference of two ``searchsorted`` positions: O(n_presentations log n_spikes) per site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from itloop.errors import InvalidInput
from itloop.settings import get_settings


def count_spikes(
    trains: Sequence[np.ndarray], onset_s: np.ndarray, window_ms: tuple[float, float]
) -> np.ndarray:
    """Counts in the window for every presentation and site.

    Parameters
    ----------
    trains : sequence of sorted float64 ndarray, one per site
    onset_s : ndarray of shape (n_presentations,)
    window_ms : (start, end) in milliseconds after onset; the window is half-open [start, end).

    Returns
    -------
    ndarray of int64 of shape (n_presentations, n_sites)
    """
    start, end = window_ms[0] / 1000.0, window_ms[1] / 1000.0
    lo, hi = onset_s + start, onset_s + end
    out = np.empty((len(onset_s), len(trains)), dtype=np.int64)
    for k, train in enumerate(trains):
        out[:, k] = np.searchsorted(train, hi, side="left") - np.searchsorted(train, lo, side="left")
    return out


def resolve_window(
    window_ms: Sequence[float] | None = None,
    *,
    start_ms: float | None = None,
    end_ms: float | None = None,
    default: Sequence[float] | None = None,
) -> tuple[float, float]:
    """The one place a response window is decided: what was asked, else the lab's, checked.

    ``window_ms`` (both ends) or ``start_ms``/``end_ms`` (each end on its own) override
    ``default``, which is ``ITLOOP_RESPONSE_WINDOW_MS`` unless given.
    """
    base = window_ms or default or get_settings().response_window_ms
    return check_window((base[0] if start_ms is None else start_ms, base[1] if end_ms is None else end_ms))


def check_window(window_ms: Sequence[float]) -> tuple[float, float]:
    a, b = float(window_ms[0]), float(window_ms[1])
    if not (np.isfinite(a) and np.isfinite(b)) or b <= a:
        raise InvalidInput(f"window_ms must satisfy start < end, got ({a:g}, {b:g}) ms")
    if b - a > 10_000:
        raise InvalidInput(f"window ({a:g}, {b:g}) ms is longer than 10 s")
    return a, b
