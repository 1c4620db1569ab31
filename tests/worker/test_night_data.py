"""The night's data is built once (by night.responses) and shared by every refit and the analysis.

Building it reads every spike train of every day, so the night's spike reads must not grow with
the number of candidates. Real pipeline, real database and store; the only instrument is a
counting wrapper around the function that reads spike trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import server.recordings.queries as queries
from itloop.storage import get_store
from server.db.engine import session_scope
from server.jobs.tables import JobState
from server.recordings import service as recordings
from server.recordings.ingest.responses import resolve_window
from tests.factories import Lab, night_row, run_night, show_day
from tests.worker.test_night_pipeline import lab, one_torch_thread  # noqa: F401  (fixtures)
from worker.stages import night_data


def _count_spike_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"sessions": 0}
    real = queries.load_trains

    def counting(**kw: Any) -> Any:
        calls["sessions"] += 1
        return real(**kw)

    monkeypatch.setattr(queries, "load_trains", counting)
    return calls


def test_a_nights_spike_reads_do_not_grow_with_its_candidates(
    lab: Lab,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each refit used to rebuild the training set, re-reading every day's spikes (and the first
    day's again for drift); now ``night.responses`` reads each day once for the whole night."""
    show_day(lab)
    run_night(lab, {"candidates": ["tiny_cnn"]})
    show_day(lab)
    reads = _count_spike_reads(monkeypatch)
    one = run_night(lab, {"candidates": ["tiny_cnn"]})
    with_one = reads["sessions"]
    three = run_night(lab, {"candidates": ["tiny_cnn", "pixels16", "small_cnn"]})
    with_three = reads["sessions"] - with_one
    for night_id in (one, three):
        assert night_row(lab, night_id).state == JobState.succeeded, night_row(lab, night_id).error
    assert with_three == with_one
    # the night's data reads each of the two days once; the to-date analysis reads them once more
    assert with_one <= 2 * len(lab.days)
    store = get_store(lab.settings.resolved_store_url)
    assert store.exists(night_data.key(one)) and store.exists(night_data.key(three))


def test_night_data_round_trips_and_is_built_when_missing(lab: Lab) -> None:  # noqa: F811
    show_day(lab)
    run_night(lab)
    show_day(lab)
    store = get_store(lab.settings.resolved_store_url)
    with session_scope(lab.url) as session:
        rec = recordings.get_session(session=session, session_id=lab.days[-1])
        window = resolve_window(None)
        built = night_data.build(session, rec, window, None)
        assert not store.exists(night_data.key(999))
        stored = night_data.load_or_build(session, store, 999, rec, window, None)
        assert store.exists(night_data.key(999))
        loaded = night_data.NightData.from_bytes(store.get(night_data.key(999)))
        first_day = night_data.build(session, rec, window, train_days=1)
        images = loaded.images(session)
    for got in (stored, loaded):
        assert got.site_ids == built.site_ids and got.sessions == built.sessions == lab.days
        np.testing.assert_array_equal(got.image_ids, built.image_ids)
        np.testing.assert_array_equal(got.mean, built.mean)
        np.testing.assert_array_equal(got.today_trials, built.today_trials)  # NaN padding included
        assert got.window_ms == window
    assert [im.id for im in images] == loaded.image_ids.tolist()
    assert night_data.twin_pairs(images), "day 1 showed night 0's twins"
    assert first_day.sessions == lab.days[-1:] and len(first_day.image_ids) < len(built.image_ids)
