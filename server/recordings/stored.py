"""A session's stored data: counts of what is stored, and the response rows derived from spikes.

Responses (spike counts per presentation and site in one window) are written at ingest and
may be recomputed for another window later; both go through :func:`write_responses`.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.recordings.ingest.copy import insert_columns
from server.recordings.ingest.responses import check_window, count_spikes, resolve_window
from server.recordings.queries import load_trains
from server.recordings.tables import Presentation, RecordingSession, Response, SpikeTrain


def counts(
    *, session: Session, session_pk: int, window_ms: tuple[float, float] | None = None
) -> dict[str, int]:
    """Stored counts: sites with a train, presentations, spikes, responses in the window."""
    a, b = resolve_window(window_ms)
    sites, spikes = session.execute(
        select(func.count(SpikeTrain.id), func.coalesce(func.sum(SpikeTrain.n_spikes), 0)).where(
            SpikeTrain.session_pk == session_pk
        )
    ).one()
    pres = session.scalar(select(func.count(Presentation.id)).where(Presentation.session_pk == session_pk))
    resp = session.scalar(
        select(func.count(Response.id)).where(
            Response.session_pk == session_pk, Response.window_start_ms == a, Response.window_end_ms == b
        )
    )
    return {
        "sites": int(sites),
        "presentations": int(pres or 0),
        "spikes": int(spikes),
        "responses": int(resp or 0),
    }


def delete_data(*, session: Session, session_pk: int) -> None:
    for table in (Response, SpikeTrain, Presentation):
        session.execute(delete(table).where(table.session_pk == session_pk))


def presentation_ids(*, session: Session, session_pk: int, event_ids: list[str]) -> np.ndarray:
    rows = session.execute(
        select(Presentation.event_id, Presentation.id).where(Presentation.session_pk == session_pk)
    )
    ids = {e: i for e, i in rows}
    return np.asarray([ids[e] for e in event_ids], dtype=np.int64)


def write_responses(
    *,
    session: Session,
    session_pk: int,
    presentation_ids: np.ndarray,
    site_pks: list[int],
    trains: list[np.ndarray],
    onset_s: np.ndarray,
    window_ms: tuple[float, float],
) -> int:
    counts_ = count_spikes(trains, onset_s, window_ms)  # (n_pres, n_sites)
    n_pres, n_sites = counts_.shape
    if n_pres * n_sites == 0:
        return 0
    length_s = (window_ms[1] - window_ms[0]) / 1000.0
    flat = counts_.ravel()
    return insert_columns(
        session,
        Response.__table__,  # type: ignore[arg-type]
        {
            "session_pk": np.full(flat.size, session_pk, dtype=np.int64),
            "presentation_id": np.repeat(presentation_ids, n_sites),
            "site_pk": np.tile(np.asarray(site_pks, dtype=np.int64), n_pres),
            "window_start_ms": np.full(flat.size, window_ms[0]),
            "window_end_ms": np.full(flat.size, window_ms[1]),
            "count": flat,
            "rate_hz": flat / length_s,
        },
    )


def compute_responses(
    *, session: Session, recording: RecordingSession, window_ms: tuple[float, float]
) -> int:
    """(Re)compute and store the responses of a session for one window; returns the number of rows."""
    window = check_window(window_ms)
    site_ids, site_pks, trains = load_trains(session=session, session_pk=recording.id)
    pres = session.execute(
        select(Presentation.id, Presentation.onset_s)
        .where(Presentation.session_pk == recording.id)
        .order_by(Presentation.onset_s, Presentation.event_id)
    ).all()
    session.execute(
        delete(Response).where(
            Response.session_pk == recording.id,
            Response.window_start_ms == window[0],
            Response.window_end_ms == window[1],
        )
    )
    return write_responses(
        session=session,
        session_pk=recording.id,
        presentation_ids=np.asarray([p[0] for p in pres], dtype=np.int64),
        site_pks=site_pks,
        trains=trains,
        onset_s=np.asarray([p[1] for p in pres], dtype=np.float64),
        window_ms=window,
    )
