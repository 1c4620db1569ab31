"""``itloop align``: put a rig's presentation events on the recorder's clock, offline.

The work is in :mod:`itloop.align`; this command maps its two kinds of failure onto exit codes
(2: an input file is unreadable; 1: the pulses cannot be matched to the events).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itloop.commands.common import fail


def align(
    events: Annotated[
        Path,
        typer.Option(help="the rig's events: CSV, JSON list or NDJSON (event_id, image_sha256, onset_s)"),
    ],
    sync: Annotated[
        Path, typer.Option(help="sync pulses: CSV/Parquet (time_s[,stop_s]) or NWB (with --sync-series)")
    ],
    out: Annotated[Path, typer.Option(help="presentations CSV on the recorder's clock (uploadable as is)")],
    report: Annotated[Path | None, typer.Option(help="also write the fit report as JSON here")] = None,
    sync_series: Annotated[
        str | None, typer.Option(help="TimeSeries/TimeIntervals name in an NWB --sync")
    ] = None,
    refresh_hz: Annotated[
        float | None, typer.Option(help="the rig's refresh rate: flags late/dropped frames")
    ] = None,
    on_ms: Annotated[
        float | None, typer.Option(help="planned image duration when the events lack on_ms")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="the batch manifest JSON: planned durations by seq")
    ] = None,
    tolerance_ms: Annotated[
        float | None, typer.Option(help="pulse-to-event match tolerance (default 4)")
    ] = None,
) -> None:
    """Put the rig's presentation events on the recorder's clock from sync pulses.

    See docs/clock-alignment.md. Exit 2: an input file is unreadable; exit 1: the pulses cannot be
    matched to the events (too few, inconsistent, ambiguous).
    """
    from itloop.align import AlignInputError, run_align
    from models.clock_alignment import AlignmentError

    try:
        rep = run_align(
            events=events,
            sync=sync,
            out=out,
            report=report,
            sync_series=sync_series,
            refresh_hz=refresh_hz,
            on_ms=on_ms,
            manifest=manifest,
            tolerance_ms=tolerance_ms,
        )
    except AlignInputError as exc:
        fail(str(exc), code=2)
    except AlignmentError as exc:
        fail(f"cannot align: {exc}", code=1)
    rms = rep["residual_rms_ms"]
    typer.echo(
        f"aligned {rep['n_matched']}/{rep['n_events']} events to pulses: offset {rep['offset_s']:.6f} s, "
        f"drift {rep['drift_ppm']:+.2f} ppm, residual rms {rms:.3f} ms, max {rep['residual_max_ms']:.3f} ms; "
        f"{rep['n_missing_pulses']} missing and {rep['n_extra_pulses']} extra pulses; "
        f"{rep['n_late']} late, {rep['n_dropped']} dropped/short frames -> {out}"
    )
