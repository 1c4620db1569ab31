"""Clock alignment on simulated rigs: offset and drift recovered, bad frames flagged, bad pulses refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from models.clock_alignment import AlignmentError, align, cross_check

REFRESH = 60.0
FRAME = 1.0 / REFRESH


@dataclass
class SimRig:
    rig_onset: np.ndarray
    pulse_on: np.ndarray
    pulse_off: np.ndarray
    true_onset: np.ndarray  # recorder clock, what the screen did
    dropped: np.ndarray  # event indices shown one frame too long
    late: np.ndarray  # event indices shown one frame later than the rig reported
    has_pulse: np.ndarray  # per event


def simulate(
    *,
    seed: int = 0,
    n_trials: int = 250,
    per_trial: int = 8,
    offset: float = 1234.5678,
    drift_ppm: float = 50.0,
    missing: float = 0.02,
    spurious: float = 0.01,
    dropped: float = 0.01,
    late: float = 0.005,
    jitter_s: float = 1e-4,
) -> SimRig:
    """An RSVP session (6 frames on, 6 off, trials of 8 with 0.5-1.5 s fixation gaps) and its pulses."""
    rng = np.random.default_rng(seed)
    n = n_trials * per_trial
    drop = rng.random(n) < dropped
    on_frames = np.where(drop, 7, 6)
    frames = []
    t = 30  # frames before the first image
    for i in range(n):
        frames.append(t)
        t += on_frames[i] + 6
        if (i + 1) % per_trial == 0:
            t += int(rng.integers(30, 90))
    start = np.asarray(frames) * FRAME
    stop = start + on_frames * FRAME
    slope = 1 + drift_ppm * 1e-6
    late_mask = (rng.random(n) < late) & ~drop
    screen_on = start + np.where(late_mask, FRAME, 0.0)
    true_on = offset + slope * screen_on + rng.normal(0, jitter_s, n)
    true_off = offset + slope * stop + rng.normal(0, jitter_s, n)
    rig = start + rng.normal(0, jitter_s / 2, n)  # the rig's flip timestamps
    keep = rng.random(n) >= missing
    n_extra = int(round(spurious * n))
    extra_on = rng.uniform(true_on[0], true_on[-1], n_extra)
    extra_off = extra_on + rng.uniform(0.005, 0.2, n_extra)
    p_on = np.concatenate([true_on[keep], extra_on])
    p_off = np.concatenate([true_off[keep], extra_off])
    order = rng.permutation(len(p_on))
    return SimRig(
        rig_onset=rig,
        pulse_on=p_on[order],
        pulse_off=p_off[order],
        true_onset=true_on,
        dropped=np.flatnonzero(drop),
        late=np.flatnonzero(late_mask),
        has_pulse=keep,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_offset_and_drift_and_flags_frames(seed: int) -> None:
    sim = simulate(seed=seed)
    n = len(sim.rig_onset)
    result = align(
        sim.rig_onset, sim.pulse_on, sim.pulse_off, planned_on_s=np.full(n, 0.1), refresh_hz=REFRESH
    )
    rep = result.report
    assert abs(result.clock.offset_s - 1234.5678) < 2e-4
    assert abs(result.clock.drift_ppm - 50.0) < 1.0
    assert rep["residual_rms_ms"] < 0.5
    assert rep["residual_max_ms"] < 1.0
    assert rep["n_missing_pulses"] == int((~sim.has_pulse).sum())
    assert rep["n_extra_pulses"] >= 1
    # Every dropped frame whose pulse was recorded is flagged, as one frame too long; a late frame
    # (which starts one frame late and ends on time) as one frame too short; nothing else.
    off_by = result.dropped_frames
    expected = {int(i) for i in sim.dropped if sim.has_pulse[i]}
    late_with_pulse = {int(i) for i in sim.late if sim.has_pulse[i]}
    assert len(expected) >= 10 and len(late_with_pulse) >= 3
    assert set(np.flatnonzero(off_by == 1)) == expected
    assert set(np.flatnonzero(off_by == -1)) == late_with_pulse
    assert set(np.flatnonzero(off_by != 0)) == expected | late_with_pulse
    # Every late frame with a pulse is found, one frame late.
    assert set(np.flatnonzero(result.late_frames)) == late_with_pulse
    assert set(result.late_frames[list(late_with_pulse)]) == {1}
    assert set(result.flagged) == expected | late_with_pulse
    # Where the pulse is missing, the clock map places the onset: within a millisecond of the truth.
    fit = result.onset_source == "fit"
    assert fit.sum() == (~sim.has_pulse).sum()
    ok = ~np.isin(np.arange(n), sim.late)
    err = np.abs(result.onset_s - sim.true_onset)[fit & ok]
    assert err.max() < 1e-3
    # Matched onsets are the pulses themselves.
    assert np.allclose(result.onset_s[~fit], sim.true_onset[~fit], atol=1e-9)
    # Stops: measured, or onset + planned whole frames.
    assert np.all(np.isfinite(result.stop_s)) and np.all(result.stop_s > result.onset_s)


def test_order_of_inputs_does_not_matter() -> None:
    sim = simulate(seed=3, n_trials=40)
    n = len(sim.rig_onset)
    perm = np.random.default_rng(0).permutation(n)
    a = align(sim.rig_onset, sim.pulse_on, refresh_hz=REFRESH)
    b = align(sim.rig_onset[perm], sim.pulse_on, refresh_hz=REFRESH)
    assert np.allclose(a.onset_s[perm], b.onset_s)
    assert a.clock == b.clock


def test_pulses_without_falling_edges_still_align() -> None:
    sim = simulate(seed=4, n_trials=60)
    result = align(sim.rig_onset, sim.pulse_on, planned_on_s=np.full(len(sim.rig_onset), 0.1))
    assert abs(result.clock.drift_ppm - 50) < 3
    assert result.report["n_duration_measured"] == 0 and result.report["n_dropped"] == 0
    assert np.allclose(result.stop_s - result.onset_s, 0.1, atol=1e-4)


def test_too_few_pulses() -> None:
    sim = simulate(seed=5, n_trials=20)
    with pytest.raises(AlignmentError, match="too few sync pulses: 40 for 160"):
        align(sim.rig_onset, np.sort(sim.pulse_on)[:40])


def test_pulses_of_another_session_are_refused() -> None:
    sim = simulate(seed=6, n_trials=30)
    other = simulate(seed=7, n_trials=30)
    with pytest.raises(AlignmentError, match="inconsistent sync pulses"):
        align(sim.rig_onset, other.pulse_on)


def test_perfectly_periodic_onsets_are_ambiguous() -> None:
    rig = np.arange(200) * 0.2
    pulses = 500.0 + rig[5:]  # the first five pulses missing: any shift fits all but a few
    with pytest.raises(AlignmentError, match="ambiguous"):
        align(rig, pulses)


def test_bad_values() -> None:
    with pytest.raises(AlignmentError, match="finite"):
        align([0.0, 1.0, float("nan")] * 5, np.arange(15.0))
    with pytest.raises(AlignmentError, match="too few rig events"):
        align([0.0, 1.0], [0.0, 1.0])
    sim = simulate(seed=8, n_trials=10)
    with pytest.raises(AlignmentError, match="falls"):
        align(sim.rig_onset, sim.pulse_on, sim.pulse_on - 1)


def test_cross_check_finds_the_contradicting_events() -> None:
    rng = np.random.default_rng(0)
    rig = np.sort(rng.uniform(0, 600, 500))
    upload = 12.0 + (1 + 30e-6) * rig + rng.normal(0, 1e-4, 500)
    upload[[17, 300]] += [0.05, -0.2]
    clock, res = cross_check(rig, upload, tolerance_s=FRAME)
    assert abs(clock.drift_ppm - 30) < 1
    bad = np.flatnonzero(np.abs(res) > FRAME * 1e3)
    assert list(bad) == [17, 300]
    assert res[17] == pytest.approx(50, abs=1) and res[300] == pytest.approx(-200, abs=1)


def test_fast_screens_still_tell_late_frames_from_on_time() -> None:
    """At 240 Hz a frame is 4.2 ms: the match tolerance shrinks below half a frame."""
    rng = np.random.default_rng(9)
    frame = 1 / 240
    frames_ = np.cumsum(np.where(np.arange(400) % 8 == 0, rng.integers(100, 300, 400), 48))
    rig = frames_ * frame
    late = rng.choice(400, 6, replace=False)
    pulses = 77.0 + (1 + 20e-6) * (rig + np.isin(np.arange(400), late) * frame) + rng.normal(0, 5e-5, 400)
    result = align(rig, pulses, refresh_hz=240)
    assert set(np.flatnonzero(result.late_frames)) == set(late)
    assert (
        result.report["residual_max_ms"] < 0.5 and result.report["tolerance_ms"] < 0.45 * frame * 1e3 + 1e-9
    )
