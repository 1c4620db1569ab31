"""Clock alignment: the rig's presentation log onto the recorder's clock, from sync pulses.

Why: the rig reports when it flipped each image (``onset_s`` on the rig's clock); spikes are
timed by the recorder. The two clocks differ by an offset (they started at different times)
and a drift (two crystals never tick at exactly the same rate: tens of ppm, i.e. tens of ms
per hour, more than the 70-170 ms response window can ignore over a session). The rig marks
each presentation with a sync pulse the recorder also sees (a TTL line raised on the flip, or a
photodiode under a patch drawn with the image), so the recorder's pulse times are the rig's
flips on the recorder's clock. This module fits the map ``recorder = offset + slope * rig``
and builds the presentations on the recorder's clock.

Pulses are imperfect: some are missing (a photodiode threshold missed, a TTL lost), some are
extra (noise, a pulse from another device). So pulses are not paired by index. Instead:

1. **Coarse offset** from structure: every pairing of one of the first rig events with any
   pulse proposes an offset; each proposal is scored by how many of the first events (the
   anchor, a few seconds) land within tolerance of some pulse. The inter-pulse-interval
   pattern (trial gaps, fixation breaks) makes the true offset stand out.
2. **Progressive fit**: from each of the best few distinct proposals, match events to their
   nearest pulse over a window that doubles each round, refitting offset and slope by least
   squares on the matches (a drift too large to extrapolate over the whole session at once is
   extrapolated only twice as far as it was measured). A final robust refit drops matches whose
   residual is far out (median absolute deviation).
3. The proposal whose fit matches the most events wins; if another, different fit matches
   nearly as many, the pulses are ambiguous (e.g. a perfectly periodic sequence with no
   gaps) and alignment is refused rather than guessed.

Then, with the rig's refresh rate: a rig event with no pulse within tolerance but an unused
pulse whole frames later is a **late frame** (the screen showed it later than the rig said);
a pulse whose width (rising to falling edge, when falling edges are given) differs from the
planned duration, in whole frames, by half a frame or more is a **dropped frame** (a flip that
missed its frame keeps the image up one frame longer). Durations on a screen are whole frames,
so a deviation past half a frame is a deviation of at least one frame.

Pure: numpy in, dataclasses out; :class:`AlignmentError` (a ``ValueError``) says why pulses
could not be matched. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from models.pulse_matching import fit_line, propose_offsets, refine_fit

DEFAULT_TOLERANCE_S = 0.004  # a TTL jitters by microseconds, a photodiode by a fraction of a frame
DEFAULT_MAX_DRIFT_PPM = 200.0  # quartz clocks: +-100 ppm at worst, typically tens
DEFAULT_ANCHOR_S = 10.0
MIN_EVENTS = 8
MAX_LATE_FRAMES = 3


class AlignmentError(ValueError):
    """The pulses cannot be matched to the rig's events; the message says why."""


@dataclass(frozen=True)
class ClockMap:
    """``recorder_s = offset_s + slope * rig_s``."""

    offset_s: float
    slope: float

    @property
    def drift_ppm(self) -> float:
        return (self.slope - 1.0) * 1e6

    def __call__(self, rig_s: np.ndarray | float) -> np.ndarray:
        return self.offset_s + self.slope * np.asarray(rig_s, dtype=np.float64)


@dataclass
class Alignment:
    """Per rig event (in the order given): where it lies on the recorder's clock and what went wrong.

    ``pulse`` indexes the pulses as given (-1: no pulse); ``onset_source`` is ``"pulse"`` where
    the event's own pulse gives the onset and ``"fit"`` where the clock map does (pulse missing).
    ``late_frames`` > 0 for late frames, ``dropped_frames`` != 0 where the measured duration is
    off by at least one frame (NaN-free ints; 0 where not measured, see ``measured``).
    """

    clock: ClockMap
    onset_s: np.ndarray
    stop_s: np.ndarray
    onset_source: np.ndarray
    pulse: np.ndarray
    residual_ms: np.ndarray
    duration_ms: np.ndarray
    late_frames: np.ndarray
    dropped_frames: np.ndarray
    measured: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> np.ndarray:
        """Indices of events with a late or dropped frame."""
        return np.flatnonzero((self.late_frames != 0) | (self.dropped_frames != 0))


def _as_times(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AlignmentError(f"{name}: value {i + 1} is {arr[i]!r}; times must be finite seconds")
    return arr


class _Events(NamedTuple):
    """Per rig event, in rig-time order: what the pulses say about it once the clock is fitted."""

    has: np.ndarray  # a pulse is matched (on time or late)
    onset: np.ndarray
    stop: np.ndarray
    residual_ms: np.ndarray
    duration_ms: np.ndarray
    measured: np.ndarray
    dropped: np.ndarray


def _check_counts(n: int, m: int, min_match_fraction: float) -> None:
    """Refuse before any work when there are too few events or too few pulses to match them."""
    if n < MIN_EVENTS:
        raise AlignmentError(f"too few rig events: {n}; alignment needs at least {MIN_EVENTS}")
    if m < max(MIN_EVENTS, int(np.ceil(min_match_fraction * n))):
        raise AlignmentError(
            f"too few sync pulses: {m} for {n} rig events; at least {min_match_fraction:.0%} of the events "
            "need their pulse (is this the right sync channel and the whole recording?)"
        )


def _falling_edges(pulse_off_s: Any | None, p_in: np.ndarray) -> np.ndarray:
    """Falling edges, one per rising edge (all NaN when not given); a pulse may not fall before it rises."""
    m = len(p_in)
    if pulse_off_s is None:
        return np.full(m, np.nan)
    off_in = np.asarray(pulse_off_s, dtype=np.float64).ravel()
    if len(off_in) != m:
        raise AlignmentError(f"sync pulses: {m} rising edges but {len(off_in)} falling edges")
    bad = np.isfinite(off_in) & (off_in < p_in)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AlignmentError(
            f"sync pulses: pulse {i + 1} falls ({off_in[i]:.6f} s) before it rises ({p_in[i]:.6f} s)"
        )
    return off_in


def _planned_durations(planned_on_s: Any | None, n: int) -> np.ndarray | None:
    """Planned durations as floats, one per rig event, or None when not given."""
    if planned_on_s is None:
        return None
    planned = np.asarray(planned_on_s, dtype=np.float64).ravel()
    if len(planned) != n:
        raise AlignmentError(f"planned durations: {len(planned)} for {n} rig events")
    return planned


def _frame_and_tolerance(refresh_hz: float | None, tolerance_s: float | None) -> tuple[float | None, float]:
    """Frame length (None without a refresh rate) and the matching tolerance (under half a frame)."""
    frame = 1.0 / refresh_hz if refresh_hz else None
    if frame is not None and not (0 < frame < 1):
        raise AlignmentError(f"refresh rate {refresh_hz!r} Hz is not plausible")
    if tolerance_s is None:
        tolerance_s = min(DEFAULT_TOLERANCE_S, 0.45 * frame) if frame is not None else DEFAULT_TOLERANCE_S
    return frame, tolerance_s


def _candidate_fits(
    r: np.ndarray, p: np.ndarray, tolerance_s: float, max_drift_ppm: float, anchor_s: float
) -> list[tuple[int, float, float, np.ndarray]]:
    """(matched events, offset, slope, match) per plausible coarse offset, most matches first."""
    n = len(r)
    anchor = int(np.searchsorted(r, r[0] + anchor_s, side="right"))
    anchor = min(n, max(anchor, 40))
    anchor_span = max(float(r[anchor - 1] - r[0]), 1e-3)
    coarse_tol = tolerance_s + max_drift_ppm * 1e-6 * anchor_span
    proposals = propose_offsets(r, p, anchor, coarse_tol)
    if not proposals:
        raise AlignmentError(
            f"inconsistent sync pulses: no offset puts even half of the first {anchor} rig events within "
            f"{coarse_tol * 1e3:.1f} ms of a pulse; the pulse pattern does not follow the rig's onsets "
            "(another channel or session, or onsets not in seconds?)"
        )
    fits = []
    for _, d0 in proposals:
        a, b, mt = refine_fit(r, p, d0, tolerance_s, coarse_tol, anchor_s)
        if abs(b - 1.0) * 1e6 > max_drift_ppm:
            continue
        fits.append((int((mt >= 0).sum()), a, b, mt))
    if not fits:
        raise AlignmentError(
            f"inconsistent sync pulses: every candidate fit drifts by more than {max_drift_ppm:g} ppm"
        )
    fits.sort(key=lambda f: -f[0])
    return fits


def _pick_fit(
    fits: list[tuple[int, float, float, np.ndarray]],
    r: np.ndarray,
    tolerance_s: float,
    min_match_fraction: float,
) -> tuple[float, float, np.ndarray]:
    """The best fit, unless a different one matches nearly as many events or it matches too few."""
    n = len(r)
    best_n, a, b, match = fits[0]
    margin = max(3, int(0.01 * n))
    for other_n, oa, ob, _ in fits[1:]:
        if abs((oa + ob * r[0]) - (a + b * r[0])) > tolerance_s and other_n > best_n - margin:
            raise AlignmentError(
                f"ambiguous sync pulses: two clock maps differing by {abs(oa - a) * 1e3:.1f} ms match "
                f"{best_n} and {other_n} of {n} events; the onsets are too regular to tell which pulse is "
                "which (include gaps, e.g. inter-trial intervals, or a distinct start pattern)"
            )
    if best_n < min_match_fraction * n:
        raise AlignmentError(
            f"inconsistent sync pulses: only {best_n} of {n} rig events have a pulse within "
            f"{tolerance_s * 1e3:g} ms of the best clock map (offset {a:.6f} s, drift "
            f"{(b - 1) * 1e6:.1f} ppm); "
            f"at least {min_match_fraction:.0%} are needed"
        )
    return a, b, match


def _late_frames(
    p: np.ndarray,
    pred: np.ndarray,
    match: np.ndarray,
    used: np.ndarray,
    frame: float | None,
    slope: float,
    tolerance_s: float,
) -> np.ndarray:
    """Frames late per event: no pulse where predicted, but an unused one whole frames later.

    Matches such an event to that pulse in place (``match`` and ``used`` are updated).
    """
    late = np.zeros(len(pred), dtype=np.int64)
    if frame is None:
        return late
    for i in map(int, np.flatnonzero(match < 0)):
        lo = int(np.searchsorted(p, pred[i] + 0.5 * frame))
        hi = int(np.searchsorted(p, pred[i] + (MAX_LATE_FRAMES + 0.5) * frame, side="right"))
        free = [j for j in range(lo, hi) if not used[j]]
        if free:
            j = free[0]
            k = int(round((p[j] - pred[i]) / (frame * slope)))
            if k >= 1 and abs(p[j] - pred[i] - k * frame * slope) <= tolerance_s:
                match[i], used[j], late[i] = j, True, k
    return late


def _events(
    p: np.ndarray,
    off: np.ndarray,
    pred: np.ndarray,
    match: np.ndarray,
    late: np.ndarray,
    slope: float,
    planned: np.ndarray | None,
    frame: float | None,
) -> _Events:
    """Onsets, stops, residuals and durations per event; dropped frames where durations are measured."""
    n = len(pred)
    has = match >= 0
    residual = np.full(n, np.nan)
    on_time = has & (late == 0)
    residual[on_time] = (p[match[on_time]] - pred[on_time]) * 1e3
    onset = np.where(has, p[np.maximum(match, 0)], pred)
    width = np.where(has, off[np.maximum(match, 0)] - p[np.maximum(match, 0)], np.nan)
    measured = np.isfinite(width)
    duration_ms = width / slope * 1e3
    stop = np.where(measured, onset + np.nan_to_num(width), np.nan)
    dropped = np.zeros(n, dtype=np.int64)
    if planned is not None:
        planned_s = np.round(planned / frame) * frame if frame is not None else planned
        stop = np.where(measured, stop, onset + planned_s * slope)
        if frame is not None:
            extra = np.where(measured, width / slope - planned_s, 0.0)
            flag = measured & (np.abs(extra) >= 0.5 * frame)
            dropped[flag] = np.round(extra[flag] / frame).astype(np.int64)
            dropped[flag & (dropped == 0)] = np.sign(extra[flag & (dropped == 0)]).astype(np.int64)
    return _Events(has, onset, stop, residual, duration_ms, measured, dropped)


def _report(
    clock: ClockMap,
    p: np.ndarray,
    pred: np.ndarray,
    used: np.ndarray,
    ev: _Events,
    late: np.ndarray,
    tolerance_s: float,
    refresh_hz: float | None,
    frame: float | None,
) -> dict[str, Any]:
    """Counts and residual summary of an alignment, for the caller to log or store."""
    span_lo, span_hi = pred[0] - tolerance_s, pred[-1] + tolerance_s + (MAX_LATE_FRAMES * (frame or 0))
    in_span = (p >= span_lo) & (p <= span_hi)
    res_ok = ev.residual_ms[np.isfinite(ev.residual_ms)]
    return {
        "n_events": len(pred),
        "n_pulses": len(p),
        "n_matched": int(ev.has.sum()),
        "n_missing_pulses": int((~ev.has).sum()),
        "n_extra_pulses": int((in_span & ~used).sum()),
        "offset_s": clock.offset_s,
        "drift_ppm": clock.drift_ppm,
        "residual_rms_ms": float(np.sqrt(np.mean(res_ok**2))) if len(res_ok) else None,
        "residual_max_ms": float(np.max(np.abs(res_ok))) if len(res_ok) else None,
        "tolerance_ms": tolerance_s * 1e3,
        "refresh_hz": refresh_hz,
        "frame_ms": frame * 1e3 if frame else None,
        "n_late": int((late > 0).sum()),
        "n_dropped": int((ev.dropped != 0).sum()),
        "n_duration_measured": int(ev.measured.sum()),
    }


def _in_caller_order(
    clock: ClockMap,
    ev: _Events,
    late: np.ndarray,
    match: np.ndarray,
    r_order: np.ndarray,
    p_order: np.ndarray,
    report: dict[str, Any],
) -> Alignment:
    """The alignment with events back in the order the caller gave them, pulses by their given index."""
    n = len(r_order)
    inv = np.empty(n, dtype=np.int64)
    inv[r_order] = np.arange(n)
    pulse_idx = np.where(ev.has, p_order[np.maximum(match, 0)], -1)
    return Alignment(
        clock=clock,
        onset_s=ev.onset[inv],
        stop_s=ev.stop[inv],
        onset_source=np.where(ev.has, "pulse", "fit")[inv],
        pulse=pulse_idx[inv],
        residual_ms=ev.residual_ms[inv],
        duration_ms=ev.duration_ms[inv],
        late_frames=late[inv],
        dropped_frames=ev.dropped[inv],
        measured=ev.measured[inv],
        report=report,
    )


def align(
    rig_onset_s: Any,
    pulse_on_s: Any,
    pulse_off_s: Any | None = None,
    *,
    planned_on_s: Any | None = None,
    refresh_hz: float | None = None,
    tolerance_s: float | None = None,
    max_drift_ppm: float = DEFAULT_MAX_DRIFT_PPM,
    anchor_s: float = DEFAULT_ANCHOR_S,
    min_match_fraction: float = 0.8,
) -> Alignment:
    """Fit the rig->recorder clock map from sync pulses and place every rig event on the recorder clock.

    Parameters
    ----------
    rig_onset_s : rig-reported onsets (rig clock, seconds), one per presentation, any order.
    pulse_on_s : pulse rising edges (recorder clock, seconds), any order; missing and extra allowed.
    pulse_off_s : falling edges, one per rising edge (NaN where unknown); gives measured durations.
    planned_on_s : planned image duration per event (seconds; e.g. the manifest's ``on_ms``/1000).
    refresh_hz : the rig screen's refresh rate; needed to flag late and dropped frames.
    tolerance_s : how far a pulse may lie from its predicted time and still be the event's pulse;
        default 4 ms, or 0.45 frame if less (so that a pulse a frame late is never taken as on time).
    min_match_fraction : the share of events that must find their pulse, else :class:`AlignmentError`.
    """
    r_in = _as_times("rig onsets", rig_onset_s)
    p_in = _as_times("sync pulses", pulse_on_s)
    n, m = len(r_in), len(p_in)
    _check_counts(n, m, min_match_fraction)
    off_in = _falling_edges(pulse_off_s, p_in)
    planned = _planned_durations(planned_on_s, n)
    frame, tolerance_s = _frame_and_tolerance(refresh_hz, tolerance_s)

    r_order = np.argsort(r_in, kind="stable")
    r = r_in[r_order]
    p_order = np.argsort(p_in, kind="stable")
    p = p_in[p_order]

    fits = _candidate_fits(r, p, tolerance_s, max_drift_ppm, anchor_s)
    a, b, match = _pick_fit(fits, r, tolerance_s, min_match_fraction)
    clock = ClockMap(float(a), float(b))
    pred = clock(r)
    used = np.zeros(m, dtype=bool)
    used[match[match >= 0]] = True
    late = _late_frames(p, pred, match, used, frame, b, tolerance_s)
    ev = _events(
        p, off_in[p_order], pred, match, late, b, None if planned is None else planned[r_order], frame
    )
    report = _report(clock, p, pred, used, ev, late, tolerance_s, refresh_hz, frame)
    return _in_caller_order(clock, ev, late, match, r_order, p_order, report)


def cross_check(
    rig_onset_s: Any,
    upload_onset_s: Any,
    *,
    tolerance_s: float,
) -> tuple[ClockMap, np.ndarray]:
    """Residuals (ms) of uploaded onsets against the rig's, same events in the same order, after a fit.

    Why a fit: the upload is on the recorder's clock and the rig's events on the rig's, so only
    what no offset and drift explains is a contradiction. The fit is robust (median-based
    outlier rejection before the final least squares), so a few contradicting events stand out
    instead of bending the line; the caller reports those beyond ``tolerance_s``.
    """
    r = _as_times("rig onsets", rig_onset_s)
    u = _as_times("uploaded onsets", upload_onset_s)
    if len(r) != len(u):
        raise AlignmentError(f"{len(r)} rig onsets but {len(u)} uploaded onsets")
    if len(r) == 0:
        raise AlignmentError("no events in common")
    if len(r) < 3:
        a, b = float(np.median(u - r)), 1.0
    else:
        a, b = fit_line(r, u)
        for _ in range(3):
            res = u - (a + b * r)
            keep = np.abs(res - np.median(res)) <= max(tolerance_s, 5 * 1.4826 * np.median(np.abs(res)))
            if keep.sum() < 3:
                break
            a, b = fit_line(r[keep], u[keep])
    clock = ClockMap(float(a), float(b))
    return clock, (u - clock(r)) * 1e3
