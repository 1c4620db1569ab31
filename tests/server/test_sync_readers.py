"""Reading sync pulses: sampled traces, event series, interval tables and CSV files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from server.errors import InvalidUpload
from server.recordings.ingest.sync import _edges, read_nwb_sync, read_sync_table


def test_edges_of_a_sampled_trace() -> None:
    t = np.arange(20) * 0.001
    v = np.zeros(20)
    v[0:3] = 5.0  # already high at the start: counted as a pulse from the first sample
    v[8:12] = 4.8
    v[17:] = 5.1  # still high at the end: no falling edge
    on, off = _edges(t, v)
    assert np.allclose(on, [0.0, 0.008, 0.017])
    assert off is not None and np.allclose(off[:2], [0.003, 0.012]) and np.isnan(off[2])


def test_an_event_series_is_one_pulse_per_timestamp() -> None:
    t = np.array([1.0, 2.0, 3.5])
    on, off = _edges(t, np.ones(3))
    assert np.array_equal(on, t) and off is None


def test_nwb_interval_table_and_series(tmp_path: Path) -> None:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.epoch import TimeIntervals

    nwb = NWBFile(
        session_description="t", identifier="t", session_start_time=datetime(2026, 1, 1, tzinfo=UTC)
    )
    table = TimeIntervals(name="photodiode", description="pulses")
    for a in (1.0, 2.0, 3.0):
        table.add_row(start_time=a, stop_time=a + 0.1)
    nwb.add_time_intervals(table)
    nwb.add_acquisition(TimeSeries(name="ttl", data=np.ones(3), timestamps=[1.0, 2.0, 3.0], unit="V"))
    path = tmp_path / "s.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    on, off = read_nwb_sync(path, "photodiode")
    assert np.allclose(on, [1, 2, 3]) and off is not None and np.allclose(off, [1.1, 2.1, 3.1])
    on, off = read_nwb_sync(path, "ttl")
    assert np.allclose(on, [1, 2, 3]) and off is None
    with pytest.raises(InvalidUpload, match="no object named 'nope'"):
        read_nwb_sync(path, "nope")
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("time_s\n1\n")
    with pytest.raises(InvalidUpload, match="not an NWB"):
        read_nwb_sync(csv_file, "ttl")


def test_sync_csv(tmp_path: Path) -> None:
    good = tmp_path / "g.csv"
    good.write_text("time_s,stop_s\n1.0,1.1\n2.0,\n")
    on, off = read_sync_table(good)
    assert np.allclose(on, [1, 2]) and off is not None and off[0] == pytest.approx(1.1) and np.isnan(off[1])
    only = tmp_path / "o.csv"
    only.write_text("time_s\n1.0\n2.0\n")
    assert read_sync_table(only)[1] is None
    bad = tmp_path / "b.csv"
    bad.write_text("time_s\n1.0\nabc\n")
    with pytest.raises(InvalidUpload, match="could not be read"):
        read_sync_table(bad)
