"""The night's data, built once by ``night.responses`` and shared by every refit and the analysis.

Building it reads every spike train of every day of the subject (the responses are computed from
them), so doing it per candidate multiplied the night's largest read by the number of candidates.
It is stored as one ``.npz`` in the object store (``nights/<night id>/data.npz``), so refits on
other workers load it too; a stage that finds it missing (a night started by an older worker)
builds and stores it itself.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from itloop.errors import InvalidInput
from server.images.service import clean_pool
from server.images.tables import Image
from server.recordings.queries import ResponseTable, responses_by_image
from server.recordings.tables import Presentation, RecordingSession
from worker.stages.data import images_by_id

if TYPE_CHECKING:
    from itloop.storage import ObjectStore
    from models.tracking import DriftReport

log = logging.getLogger(__name__)


@dataclass
class NightData:
    """Repeat-averaged responses of today's sites to every image seen so far, and today's trials.

    ``mean[k]`` is image ``image_ids[k]``'s mean response (pooled over the days used);
    ``today_trials`` (today's images x sites x repeats, NaN-padded) are today's single trials;
    ``drift_flagged``/``drift_reasons`` are the reference-set drift test against the first day
    (None on that day, or when it cannot be tested).
    """

    site_ids: list[str]
    image_ids: np.ndarray
    mean: np.ndarray
    today_image_ids: np.ndarray
    today_trials: np.ndarray
    sessions: list[str]
    window_ms: tuple[float, float]
    drift_flagged: np.ndarray | None = None
    drift_reasons: list[str] | None = None

    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in vars(self).items() if v is not None}
        arrays["window_ms"] = np.asarray(self.window_ms, dtype=np.float64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> NightData:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        return cls(
            site_ids=[str(s) for s in a["site_ids"]],
            image_ids=a["image_ids"],
            mean=a["mean"],
            today_image_ids=a["today_image_ids"],
            today_trials=a["today_trials"],
            sessions=[str(s) for s in a["sessions"]],
            window_ms=(float(a["window_ms"][0]), float(a["window_ms"][1])),
            drift_flagged=a.get("drift_flagged"),
            drift_reasons=[str(s) for s in a["drift_reasons"]] if "drift_reasons" in a else None,
        )

    def images(self, session: Session) -> list[Image]:
        """The training images' rows, in ``image_ids`` order (one query; no pixels)."""
        return images_by_id(session, [int(i) for i in self.image_ids])


def twin_pairs(images: list[Image]) -> list[tuple[int, int]]:
    """(parent row, twin row) of every twin whose parent is among ``images``, sorted."""
    row_of = {im.id: k for k, im in enumerate(images)}
    return sorted(
        (row_of[im.parent_id], row_of[im.id])
        for im in images
        if im.parent_id is not None and im.parent_id in row_of
    )


def families(images: list[Image]) -> np.ndarray:
    """Each image's family for grouped cross-validation: its clean parent's id, or its own."""
    return np.array([im.parent_id or im.id for im in images])


def key(night_id: int) -> str:
    return f"nights/{night_id}/data.npz"


def load_or_build(
    session: Session,
    store: ObjectStore,
    night_id: int,
    rec: RecordingSession,
    window_ms: tuple[float, float],
    train_days: int | None,
) -> NightData:
    """The night's data from the store, built and stored first if no stage has done so yet."""
    if store.exists(key(night_id)):
        return NightData.from_bytes(store.get(key(night_id)))
    data = build(session, rec, window_ms, train_days)
    store.put(key(night_id), data.to_bytes())
    return data


def build(
    session: Session, rec: RecordingSession, window_ms: tuple[float, float], train_days: int | None
) -> NightData:
    """Pool every day of this subject up to ``rec`` (chronic sites keep their ids across days)."""
    today = responses_by_image(session=session, session_pk=rec.id, window_ms=window_ms)
    if not today.trials:
        raise InvalidInput(f"session {rec.session_id!r} has no responses; upload its spikes first")
    days = _days(session, rec, train_days)
    tables = {
        other.id: today
        if other.id == rec.id
        else responses_by_image(session=session, session_pk=other.id, window_ms=window_ms)
        for other in days
    }
    ids, mean = _pool(today.site_ids, list(tables.values()))
    used = [other.session_id for other in days]
    drift = _drift(session, rec, today, window_ms, tables)
    return NightData(
        site_ids=list(today.site_ids),
        image_ids=np.asarray(ids, dtype=np.int64),
        mean=mean,
        today_image_ids=np.asarray(today.image_ids, dtype=np.int64),
        today_trials=today.padded(),
        sessions=used,
        window_ms=(float(window_ms[0]), float(window_ms[1])),
        drift_flagged=None if drift is None else np.asarray(drift.flagged, dtype=bool),
        drift_reasons=None if drift is None else list(drift.reasons),
    )


def _days(session: Session, rec: RecordingSession, train_days: int | None) -> list[RecordingSession]:
    """The subject's sessions up to ``rec`` (within ``train_days``) that have presentations, in day order."""
    query = select(RecordingSession).where(
        RecordingSession.subject_id == rec.subject_id, RecordingSession.day <= rec.day
    )
    if train_days is not None:
        query = query.where(RecordingSession.day > rec.day - train_days)
    has_data = select(Presentation.id).where(Presentation.session_pk == RecordingSession.id).exists()
    return list(session.scalars(query.where(has_data).order_by(RecordingSession.day, RecordingSession.id)))


def _pool(site_ids: list[str], tables: list[ResponseTable]) -> tuple[list[int], np.ndarray]:
    """Images seen at every one of ``site_ids`` and their mean response over all repeats of all days."""
    sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(site_ids)))
    counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(site_ids)))
    for table in tables:
        cols = [table.site_ids.index(s) if s in table.site_ids else -1 for s in site_ids]
        for image_id, trials in zip(table.image_ids, table.trials, strict=True):
            for j, c in enumerate(cols):
                if c >= 0:
                    sums[image_id][j] += trials[:, c].sum()
                    counts[image_id][j] += len(trials)
    ids = sorted(i for i in sums if np.all(counts[i] > 0))
    mean = np.stack([sums[i] / counts[i] for i in ids]) if ids else np.empty((0, len(site_ids)))
    return ids, mean


def _drift(
    session: Session,
    rec: RecordingSession,
    today: ResponseTable,
    window_ms: tuple[float, float],
    tables: dict[int, ResponseTable],
) -> DriftReport | None:
    """Reference-set drift against the subject's first recorded day (None on that day)."""
    from models.tracking import detect_drift

    _, reference = clean_pool(session)
    ref_ids = {im.id for im in reference}
    first = session.scalar(
        select(RecordingSession)
        .where(RecordingSession.subject_id == rec.subject_id, RecordingSession.day < rec.day)
        .order_by(RecordingSession.day, RecordingSession.id)
    )
    if first is None or not ref_ids:
        return None
    base = tables.get(first.id) or responses_by_image(
        session=session, session_pk=first.id, window_ms=window_ms
    )
    shared = [i for i in today.image_ids if i in ref_ids and i in base.image_ids]
    if len(shared) < 3 or base.site_ids != today.site_ids:
        return None
    t_pad, b_pad = today.padded(), base.padded()
    t_rows = [today.image_ids.index(i) for i in shared]
    b_rows = [base.image_ids.index(i) for i in shared]
    return detect_drift(t_pad[t_rows], b_pad[b_rows])
