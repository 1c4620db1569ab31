"""Reading stored spike data back: trains, response matrices, responses grouped by image.

The worker fits models on :func:`responses_by_image`; exports and the dashboard read
:func:`response_matrix`. Stored responses for the window are used when present;
otherwise they are computed in memory from the trains (same numbers, nothing written).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.images.tables import Image
from server.lab.tables import Site
from server.recordings.ingest.responses import count_spikes, resolve_window
from server.recordings.tables import Presentation, RecordingSession, Response, SpikeTrain


@dataclass
class ResponseTable:
    """Trial-by-trial rates (Hz) grouped by image.

    ``trials[k]`` is an ndarray of shape (n_repeats_k, n_sites) for image ``image_ids[k]``;
    rows are repeats in presentation order, columns follow ``site_ids``.
    """

    site_ids: list[str]
    image_ids: list[int]
    image_sha256: list[str]
    trials: list[np.ndarray]
    window_ms: tuple[float, float] = (70.0, 170.0)
    event_ids: list[list[str]] = field(default_factory=list)

    @property
    def n_repeats(self) -> np.ndarray:
        return np.asarray([len(t) for t in self.trials], dtype=np.int64)

    def padded(self) -> np.ndarray:
        """ndarray of shape (n_images, n_sites, max_repeats), NaN where an image had fewer repeats."""
        n_sites = len(self.site_ids)
        reps = int(self.n_repeats.max()) if self.trials else 0
        out = np.full((len(self.trials), n_sites, reps), np.nan)
        for k, t in enumerate(self.trials):
            out[k, :, : len(t)] = t.T
        return out

    def mean(self) -> np.ndarray:
        """ndarray of shape (n_images, n_sites): the mean rate over repeats."""
        return (
            np.stack([t.mean(axis=0) for t in self.trials])
            if self.trials
            else np.empty((0, len(self.site_ids)))
        )


@dataclass
class ResponseMatrix:
    """Every presentation by every site of one session, for one window."""

    site_ids: list[str]
    site_pks: list[int]
    presentation_ids: np.ndarray
    event_ids: list[str]
    image_ids: np.ndarray
    image_sha256: list[str]
    onset_s: np.ndarray
    fixation_ok: np.ndarray
    counts: np.ndarray  # (n_presentations, n_sites) int
    rates_hz: np.ndarray  # (n_presentations, n_sites)
    window_ms: tuple[float, float]


def load_sites(*, session: Session, session_pk: int) -> tuple[list[str], list[int]]:
    """Site ids and site keys of a session's spike trains, by site id, without the spike times.

    The same rows in the same order as :func:`load_trains`; what a reader of stored responses
    needs, so it does not pull every spike blob of the session out of the database.
    """
    rows = session.execute(
        select(Site.site_id, SpikeTrain.site_pk)
        .join(Site, Site.id == SpikeTrain.site_pk)
        .where(SpikeTrain.session_pk == session_pk)
        .order_by(Site.site_id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows]


def load_trains(*, session: Session, session_pk: int) -> tuple[list[str], list[int], list[np.ndarray]]:
    """Site ids, site keys and spike trains (sorted float64 seconds) of a session, by site id."""
    rows = session.execute(
        select(Site.site_id, SpikeTrain.site_pk, SpikeTrain.times)
        .join(Site, Site.id == SpikeTrain.site_pk)
        .where(SpikeTrain.session_pk == session_pk)
        .order_by(Site.site_id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows], [np.frombuffer(r[2], dtype="<f8") for r in rows]


def response_matrix(
    *, session: Session, session_pk: int, window_ms: tuple[float, float] | None = None
) -> ResponseMatrix:
    """Counts and rates of all presentations (by onset) and sites (by site id).

    The spike trains are read only when the window's responses are not stored: every night reads
    every past day's table (the night's data, the to-date analysis), and those days' responses
    are stored, so a night's reads do not include every spike of every day.
    """
    window = resolve_window(window_ms)
    site_ids, site_pks = load_sites(session=session, session_pk=session_pk)
    pres = session.execute(
        select(
            Presentation.id,
            Presentation.event_id,
            Presentation.image_id,
            Image.sha256,
            Presentation.onset_s,
            Presentation.fixation_ok,
        )
        .join(Image, Image.id == Presentation.image_id)
        .where(Presentation.session_pk == session_pk)
        .order_by(Presentation.onset_s, Presentation.event_id)
    ).all()
    pres_ids = np.asarray([p[0] for p in pres], dtype=np.int64)
    onset = np.asarray([p[4] for p in pres], dtype=np.float64)
    where = (
        Response.session_pk == session_pk,
        Response.window_start_ms == window[0],
        Response.window_end_ms == window[1],
    )
    n_stored = session.scalar(select(func.count(Response.id)).where(*where)) or 0
    if n_stored == len(pres) * len(site_ids) and n_stored:
        row_of = {int(p): i for i, p in enumerate(pres_ids)}
        col_of = {pk: j for j, pk in enumerate(site_pks)}
        counts = np.zeros((len(pres), len(site_ids)), dtype=np.int64)
        for pid, spk, c in session.execute(
            select(Response.presentation_id, Response.site_pk, Response.count).where(*where)
        ):
            counts[row_of[pid], col_of[spk]] = c
    else:
        site_ids, site_pks, trains = load_trains(session=session, session_pk=session_pk)
        counts = count_spikes(trains, onset, window)
    length_s = (window[1] - window[0]) / 1000.0
    return ResponseMatrix(
        site_ids=site_ids,
        site_pks=site_pks,
        presentation_ids=pres_ids,
        event_ids=[p[1] for p in pres],
        image_ids=np.asarray([p[2] for p in pres], dtype=np.int64),
        image_sha256=[p[3] for p in pres],
        onset_s=onset,
        fixation_ok=np.asarray([bool(p[5]) for p in pres], dtype=bool),
        counts=counts,
        rates_hz=counts / length_s,
        window_ms=window,
    )


def responses_by_image(
    *,
    session: Session,
    session_pk: int,
    window_ms: tuple[float, float] | None = None,
    fixation_only: bool = True,
) -> ResponseTable:
    """Rates grouped by image (sorted by image id), repeats in presentation order."""
    m = response_matrix(session=session, session_pk=session_pk, window_ms=window_ms)
    keep = m.fixation_ok if fixation_only else np.ones(len(m.onset_s), bool)
    idx = np.flatnonzero(keep)
    image_ids = sorted(set(m.image_ids[idx].tolist()))
    sha_of = {int(i): s for i, s in zip(m.image_ids, m.image_sha256, strict=True)}
    trials, events = [], []
    for image_id in image_ids:
        rows = idx[m.image_ids[idx] == image_id]
        trials.append(m.rates_hz[rows])
        events.append([m.event_ids[r] for r in rows])
    return ResponseTable(
        site_ids=m.site_ids,
        image_ids=image_ids,
        image_sha256=[sha_of[i] for i in image_ids],
        trials=trials,
        window_ms=m.window_ms,
        event_ids=events,
    )


def presentation_counts(session: Session, session_pk: int, image_ids: list[int]) -> dict[int, int]:
    """Presentations with fixation held, per image, over every recorded session of the subject
    of recording session ``session_pk`` (the night's session).

    What the night's fresh clean images and its parents are chosen by: the images the subject has
    seen least are the ones the surrogates know least about, and never-shown ones have no
    measured response yet. Images never shown are absent (count 0).
    """
    if not image_ids:
        return {}
    subject = select(RecordingSession.subject_id).where(RecordingSession.id == session_pk).scalar_subquery()
    rows = session.execute(
        select(Presentation.image_id, func.count())
        .join(RecordingSession, RecordingSession.id == Presentation.session_pk)
        .where(
            RecordingSession.subject_id == subject,
            Presentation.fixation_ok.is_(True),
            Presentation.image_id.in_(image_ids),
        )
        .group_by(Presentation.image_id)
    ).all()
    return {int(i): int(n) for i, n in rows}
