"""``itloop models``: the candidate models and their checkpoint files.

``itloop models`` lists the candidates and whether their checkpoints are present;
``itloop models import`` copies a checkpoint in after loading it into the candidate's backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itloop.commands.common import fail
from itloop.settings import get_settings

models_app = typer.Typer(
    help="Candidate models and their checkpoint files (`itloop models` lists them).",
    invoke_without_command=True,
)


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List candidate models: backbone, layer, checkpoint file, whether it is present (sha256)."""
    if ctx.invoked_subcommand is not None:
        return
    from itloop.models import candidate_rows

    settings = get_settings()
    rows = candidate_rows(settings.data_dir)
    width = max(len(r.name) for r in rows)
    typer.echo(f"checkpoints folder: {(settings.data_dir / 'checkpoints').resolve()}")
    for r in rows:
        default = " (default)" if r.default else ""
        if r.checkpoint is None:
            state = "no checkpoint needed"
        elif r.sha256 is None:
            state = f"{r.checkpoint}: MISSING (itloop models import FILE --name {r.name})"
        else:
            state = f"{r.checkpoint}: present, sha256 {r.sha256}"
        typer.echo(f"{r.name:<{width}}  {r.backbone}/{r.layer}  {state}{default}")


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="a checkpoint file (state dict; MadryLab files work)")],
    name: Annotated[str, typer.Option("--name", help="the candidate it is for, e.g. resnet50")],
    force: Annotated[bool, typer.Option("--force", help="replace a different file already in place")] = False,
) -> None:
    """Copy a checkpoint into <data_dir>/checkpoints under the name the candidate expects.

    The file is loaded into the candidate's backbone first: a file that is unreadable or made for
    another architecture is refused and nothing is copied.
    """
    from itloop.models import ImportRefused, import_checkpoint

    try:
        dest, digest, replaced = import_checkpoint(get_settings().data_dir, path, name=name, force=force)
    except ImportRefused as exc:
        fail(str(exc), exc.exit_code)
    verb = "replaced" if replaced else "imported"
    typer.echo(f"{verb} {dest} (sha256 {digest}) for {name}")
