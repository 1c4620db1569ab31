"""``itloop align``, offline: the rig's event log and the recorder's sync pulses in, presentations out.

Why offline as well as on upload: a lab may want to look at the fit (offset, drift, residuals,
late and dropped frames) before uploading anything, or align sessions recorded before the rig
posted its events. The output CSV has the columns a spike upload's ``presentations`` file needs
(``event_id,image_sha256,onset_s,fixation_ok``) plus the diagnostics, so it can be uploaded as is.

Inputs: rig events as CSV (``event_id,image_sha256,onset_s`` and optionally ``seq``, ``on_ms``,
``fixation_ok``) or as the JSON list / NDJSON the rig posts; pulses as CSV/Parquet
(``time_s[,stop_s]``) or an NWB file with ``--sync-series``. The science is
``models.clock_alignment``; this module only reads and writes files.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.clock_alignment import Alignment, align

OUT_COLUMNS = (
    "event_id",
    "image_sha256",
    "onset_s",
    "stop_s",
    "fixation_ok",
    "onset_source",
    "residual_ms",
    "duration_ms",
    "late_frames",
    "dropped_frames",
)
_FALSE = {"0", "false", "f", "no", "n"}


class AlignInputError(ValueError):
    """An input file is missing, unreadable or lacks a column; the message names which."""


@dataclass
class RigLog:
    event_ids: list[str]
    images: list[str]
    onset_s: np.ndarray
    on_s: np.ndarray  # planned duration, NaN where unknown
    fixation_ok: list[bool]


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        if not isinstance(data, list):
            raise AlignInputError(f"{path.name}: expected a JSON list of events")
        return [dict(d) for d in data]
    if stripped.startswith("{"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(text.splitlines()))


def read_rig_log(path: Path, *, on_ms: float | None = None, manifest: Path | None = None) -> RigLog:
    """The rig's events, with each event's planned duration from ``on_ms``, the manifest or the file."""
    try:
        rows = _rows(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise AlignInputError(f"{path}: cannot read the rig's events ({exc})") from exc
    if not rows:
        raise AlignInputError(f"{path}: no events")
    for col in ("event_id", "image_sha256", "onset_s"):
        if col not in rows[0]:
            raise AlignInputError(f"{path.name}: no {col} column (need event_id, image_sha256, onset_s)")
    planned_by_seq: dict[int, float] = {}
    if manifest is not None:
        try:
            seq = json.loads(manifest.read_text())["sequence"]
            planned_by_seq = {int(s["seq"]): float(s["on_ms"]) for s in seq}
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise AlignInputError(f"{manifest}: not a batch manifest with a sequence ({exc})") from exc
    onset, planned = [], []
    for n, row in enumerate(rows, start=1):
        try:
            onset.append(float(row["onset_s"]))
        except (TypeError, ValueError):
            raise AlignInputError(
                f"{path.name}: event {n}: onset_s {row['onset_s']!r} is not a number"
            ) from None
        ms = math.nan
        try:
            if row.get("on_ms") not in (None, ""):
                ms = float(row["on_ms"])
            elif row.get("seq") not in (None, "") and int(row["seq"]) in planned_by_seq:
                ms = planned_by_seq[int(row["seq"])]
            elif on_ms is not None:
                ms = on_ms
        except (TypeError, ValueError):
            raise AlignInputError(
                f"{path.name}: event {n}: seq {row.get('seq')!r} / on_ms {row.get('on_ms')!r} is not a number"
            ) from None
        planned.append(ms / 1000.0)
    return RigLog(
        event_ids=[str(r.get("event_id", "")) for r in rows],
        images=[str(r.get("image_sha256", "")) for r in rows],
        onset_s=np.asarray(onset),
        on_s=np.asarray(planned),
        fixation_ok=[str(r.get("fixation_ok", True)).strip().lower() not in _FALSE for r in rows],
    )


def read_pulses(path: Path, series: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    from server.errors import InvalidUpload
    from server.recordings.ingest.sync import read_nwb_sync, read_sync_table

    if not path.is_file():
        raise AlignInputError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            hdf5 = fh.read(8) == b"\x89HDF\r\n\x1a\n"
        if hdf5:
            if not series:
                raise AlignInputError(f"{path.name} is an NWB file: name the sync series with --sync-series")
            return read_nwb_sync(path, series, path.name)
        return read_sync_table(path, path.name)
    except InvalidUpload as exc:
        raise AlignInputError(exc.detail) from None


def write_presentations(path: Path, log: RigLog, result: Alignment) -> None:
    def num(x: float, digits: int) -> str:
        return "" if not np.isfinite(x) else f"{x:.{digits}f}"

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(OUT_COLUMNS)
        for i in np.argsort(result.onset_s, kind="stable"):
            out.writerow(
                [
                    log.event_ids[i],
                    log.images[i],
                    num(result.onset_s[i], 6),
                    num(result.stop_s[i], 6),
                    "true" if log.fixation_ok[i] else "false",
                    result.onset_source[i],
                    num(result.residual_ms[i], 3),
                    num(result.duration_ms[i], 3),
                    int(result.late_frames[i]),
                    int(result.dropped_frames[i]),
                ]
            )


def run_align(
    *,
    events: Path,
    sync: Path,
    out: Path,
    report: Path | None = None,
    sync_series: str | None = None,
    refresh_hz: float | None = None,
    on_ms: float | None = None,
    manifest: Path | None = None,
    tolerance_ms: float | None = None,
) -> dict[str, Any]:
    """Align, write the presentations CSV (and the report JSON); returns the report."""
    log = read_rig_log(events, on_ms=on_ms, manifest=manifest)
    on, off = read_pulses(sync, sync_series)
    kwargs: dict[str, Any] = {} if tolerance_ms is None else {"tolerance_s": tolerance_ms / 1000.0}
    result = align(log.onset_s, on, off, planned_on_s=log.on_s, refresh_hz=refresh_hz, **kwargs)
    write_presentations(out, log, result)
    rep = dict(result.report)
    rep["flagged"] = [
        {
            "event_id": log.event_ids[i],
            "late_frames": int(result.late_frames[i]),
            "dropped_frames": int(result.dropped_frames[i]),
        }
        for i in result.flagged
    ]
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rep, indent=2) + "\n")
    return rep
