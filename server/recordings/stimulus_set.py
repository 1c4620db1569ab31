"""The StimulusSet of one session in brainio's packaging: a CSV of the images plus a zip of the PNGs.

brainio's ``StimulusSetLoader`` reads the CSV (one row per image; ``stimulus_id`` and ``filename``)
and finds every ``filename`` in the folder the zip unpacks to; Brain-Score benchmarks then show
a model exactly the images the session showed and pair the model's responses with the response
assembly (:mod:`server.recordings.export`) by ``stimulus_id``, the SHA-256 of the PNG served to
the rig. The CSV carries that hash (so each unpacked file can be checked) and every image's
lineage; the zip holds the PNGs byte for byte as served, named ``<sha256>.png``.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from itloop.errors import NotFound
from itloop.storage import ObjectStore, image_key
from server.recordings.export_nwb import require_data
from server.recordings.lineage import LINEAGE_FIELDS, image_lineage
from server.recordings.tables import Presentation, RecordingSession

#: The CSV's columns: the image and how often it was shown, then its whole lineage record.
COLUMNS = ("stimulus_id", "filename", "image_sha256", "width", "height", "n_presentations", *LINEAGE_FIELDS)


def _shown(session: Session, recording: RecordingSession) -> dict[int, int]:
    """Image id -> how often the session showed it."""
    rows = session.execute(
        select(Presentation.image_id, func.count(Presentation.id))
        .where(Presentation.session_pk == recording.id)
        .group_by(Presentation.image_id)
    ).all()
    return {int(i): int(n) for i, n in rows}


def _cell(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def stimulus_rows(*, session: Session, recording: RecordingSession) -> list[dict[str, Any]]:
    """One row per distinct image shown, ordered by hash."""
    require_data(recording)
    shown = _shown(session, recording)
    lineage = image_lineage(session, sorted(shown))
    rows = [
        {
            **{k: _cell(v) for k, v in x.items()},
            "stimulus_id": x["image_sha256"],
            "filename": f"{x['image_sha256']}.png",
            "n_presentations": shown[image_id],
        }
        for image_id, x in lineage.items()
    ]
    return sorted(rows, key=lambda r: r["stimulus_id"])


def stimulus_csv(*, session: Session, recording: RecordingSession) -> bytes:
    """The StimulusSet CSV (empty cells where a lineage value does not apply)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(stimulus_rows(session=session, recording=recording))
    return buf.getvalue().encode()


def stimulus_zip(*, session: Session, recording: RecordingSession, store: ObjectStore) -> bytes:
    """The PNGs as served, ``<sha256>.png`` each, stored uncompressed (PNG is compressed already)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for row in stimulus_rows(session=session, recording=recording):
            try:
                png = store.get(image_key(row["image_sha256"]))
            except KeyError:
                raise NotFound(
                    f"image {row['image_sha256']} of session {recording.session_id!r} is registered but its "
                    "object is missing from the store; restore the store (itloop restore) and try again"
                ) from None
            zf.writestr(zipfile.ZipInfo(row["filename"], date_time=(2000, 1, 1, 0, 0, 0)), png)
    return buf.getvalue()
