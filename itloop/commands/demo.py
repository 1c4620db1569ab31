"""``itloop demo``: the closed loop on a simulated IT population and a virtual rig.

The demo package (and torch) is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itloop.settings import get_settings


def demo(
    days: Annotated[int, typer.Option(help="days of the closed loop to simulate")] = 3,
    sites: Annotated[int, typer.Option(help="simulated IT sites")] = 12,
    out: Annotated[Path | None, typer.Option(help="report folder (default <data_dir>/demo-report)")] = None,
    seed: int = 0,
    brain: Annotated[
        str,
        typer.Option(
            help=(
                "family of the simulated population: orthogonal, natural, mix25, mix50, blur, v1, "
                "v1fine, v1coarse (the last two held out: nothing was tuned on them)"
            )
        ),
    ] = "orthogonal",
    clean_images: Annotated[
        int,
        typer.Option(
            min=4, help="new clean images shown every day (what the surrogates learn each site's tuning from)"
        ),
    ] = 48,
    fresh_repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="repeats of each new clean image (default: the night's repeats, 8); fewer repeats of "
            "more images teach the surrogates more for the same rig time",
        ),
    ] = None,
) -> None:
    """Run the closed loop on a simulated IT population and a virtual rig, then write a report."""
    from demo.run import run_demo
    from models.simulator import FAMILIES

    if brain not in FAMILIES:
        raise typer.BadParameter(
            f"unknown brain family {brain!r}; known: {', '.join(FAMILIES)}", param_hint="--brain"
        )
    report = run_demo(
        get_settings(),
        days=days,
        n_sites=sites,
        out=out,
        seed=seed,
        brain_family=brain,
        n_clean=clean_images,
        fresh_repeats=fresh_repeats,
    )
    typer.echo(f"report: {report}")
