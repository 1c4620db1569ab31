"""The night's data is built once (by night.responses) and shared by every refit and the analysis.

Building it reads every day's responses, so the night's reads must not grow with the number of
candidates; and a day whose responses are stored is read without its spike trains. Real
pipeline, real database and store; the only instruments are counting wrappers around the
functions that read a day's table and its spike trains.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, select

import server.recordings.queries as queries
from itloop.storage import get_store
from server.db.engine import session_scope
from server.jobs.tables import JobState
from server.recordings import service as recordings
from server.recordings.ingest.responses import resolve_window
from server.recordings.tables import RecordingSession, Response
from tests.factories import Lab, night_row, run_night, show_day
from tests.worker.test_night_pipeline import lab, one_torch_thread  # noqa: F401  (fixtures)
from worker.stages import night_data
from worker.stages.analyze_to_date import to_date_records


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, int]:
    """Count the sessions passed to ``server.recordings.queries.<name>`` from now on."""
    calls = {"sessions": 0}
    real = getattr(queries, name)

    def counting(**kw: Any) -> Any:
        calls["sessions"] += 1
        return real(**kw)

    monkeypatch.setattr(queries, name, counting)
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
    reads = _count_calls(monkeypatch, "response_matrix")
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


def test_stored_responses_spare_the_spike_reads_and_give_the_same_figures(
    lab: Lab,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every night reads every past day's table (night data, to-date analysis); a day whose
    responses are stored is read without its spike blobs, and the figures do not change."""
    for _ in range(2):  # two days of twins: the to-date figures exist from the third day
        show_day(lab)
        run_night(lab, {"candidates": ["tiny_cnn"]})
    show_day(lab)
    spikes = _count_calls(monkeypatch, "load_trains")
    night = run_night(lab, {"candidates": ["tiny_cnn"]})
    assert night_row(lab, night).state == JobState.succeeded, night_row(lab, night).error
    assert spikes["sessions"] == 0  # every day's responses are stored in the night's window
    window = resolve_window(None)
    with session_scope(lab.url) as session:
        day = session.scalar(select(RecordingSession.day).where(RecordingSession.session_id == lab.days[-1]))

        def figures() -> str:
            records = to_date_records(session, day=day, window_ms=window, train_days=None, n_boot=50, seed=0)
            return json.dumps(records, sort_keys=True)

        stored = figures()
        assert spikes["sessions"] == 0 and json.loads(stored), "to-date figures from stored responses"
        session.execute(delete(Response))  # the same days, counted from their spikes in memory
        from_spikes = figures()
        session.rollback()
    assert spikes["sessions"] == len(lab.days)
    assert from_spikes == stored
