"""IT sensitivity to date: every day's twins pooled, so a site's estimate tightens day by day.

Why: a site's sensitivity is a property of the site, not of the day, while one day holds only
a few twins per site and epsilon. Ranking sites, the question a lab asks of the per-site
figures, needs the evidence of every day. The pooled figures are stored beside the day's with
source ``it_to_date`` (same estimators, same units); the day's own figures (source ``it``)
still show how each night's twins did.

Each day's clean images count as that day's images (drift between days stays in the spread
used for normalisation); twins are scored against their own day's clean parent, signed by the
change their model predicted at their target site (``predicted_change`` in the lineage), so
no past model has to be loaded again. ``train_days`` limits the pool as it limits refits.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import select

from models.sensitivity import CleanResponses, DayInputs, PairedResponses, analyze_day, pool_days
from server.lab.tables import Site
from server.recordings.queries import responses_by_image
from server.recordings.tables import RecordingSession
from worker.stages.data import images_by_id

log = logging.getLogger(__name__)

#: ``source`` of the pooled figures.
SOURCE = "it_to_date"

PAIR_KINDS = ("perturbed", "random")


def day_inputs(session: Any, session_pk: int, window_ms: Any) -> DayInputs | None:
    """One recorded day's clean responses and twin pairs (None when it holds no twins)."""
    table = responses_by_image(session=session, session_pk=session_pk, window_ms=window_ms)
    if not table.image_ids:
        return None
    images = images_by_id(session, table.image_ids)
    site_ids = list(table.site_ids)
    col = {sid: i for i, sid in enumerate(site_ids)}
    site_name = dict(session.execute(select(Site.id, Site.site_id)).all())
    padded = table.padded()  # (n_images, n_sites, reps)
    row_of = {im.id: k for k, im in enumerate(images)}
    clean_rows = [k for k, im in enumerate(images) if im.kind not in (*PAIR_KINDS, "targeted")]
    pairs = [  # (clean row, twin row, twin, its epsilon rounded so that equal budgets group)
        (row_of[im.parent_id], k, im, round(float(im.epsilon), 9))
        for k, im in enumerate(images)
        if im.kind in PAIR_KINDS
        and im.parent_id in row_of
        and im.epsilon is not None
        and site_name.get(im.site_pk) in col
    ]
    if not pairs or len(clean_rows) < 2:
        return None
    clean = CleanResponses(site_ids=tuple(site_ids), trials=padded[clean_rows].transpose(1, 0, 2))
    out = []
    for eps in sorted({e for *_, e in pairs}):
        rows = [(p, c, im) for p, c, im, e in pairs if e == eps]
        owner = np.array([col[site_name[im.site_pk]] for _, _, im in rows])
        change = np.array(
            [np.nan if im.predicted_change is None else float(im.predicted_change) for *_, im in rows]
        )
        pred_perturbed = np.full((len(site_ids), len(rows)), np.nan)
        pred_perturbed[owner, np.arange(len(rows))] = change
        out.append(
            PairedResponses.from_all_sites(
                epsilon=eps,
                site_ids=site_ids,
                clean=padded[[p for p, _, _ in rows]].transpose(1, 0, 2),
                perturbed=padded[[c for _, c, _ in rows]].transpose(1, 0, 2),
                pred_clean=np.zeros_like(pred_perturbed),
                pred_perturbed=pred_perturbed,
                pair_site=owner,
                random_direction=np.array([im.kind == "random" for *_, im in rows]),
            )
        )
    return DayInputs(clean, out)


def to_date_records(
    session: Any, *, day: int, window_ms: Any, train_days: int | None, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Figures over every recorded day up to ``day`` (empty until two days hold twins)."""
    sessions = session.scalars(
        select(RecordingSession.id).where(RecordingSession.day <= day).order_by(RecordingSession.day)
    ).all()
    days = [d for d in (day_inputs(session, pk, window_ms) for pk in sessions) if d is not None]
    if train_days is not None:
        days = days[-train_days:]
    if len(days) < 2:
        return []
    pool = pool_days(days)
    result = analyze_day(pool.clean, pool.pairs, [], day=day, n_boot=n_boot, rng=seed)
    records = result.to_records()
    for r in records:
        r["source"] = SOURCE
    log.info("sensitivity to date (day %s): %d days pooled, %d figures", day, len(days), len(records))
    return records
