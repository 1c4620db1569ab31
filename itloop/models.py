"""Candidate models as a lab sees them: which need a checkpoint file, which files are in place.

Checkpoints are only ever read from ``<data_dir>/checkpoints`` (nothing is downloaded), so a
lab must put them there once; ``itloop models`` says what is missing and ``itloop models import``
puts a file in place after checking that it loads into the candidate's backbone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from worker.candidates import BUILTIN, SEARCH, resolve


class ImportRefused(Exception):
    """A checkpoint that cannot be imported; ``exit_code`` is the CLI's (2: bad input, 1: refused)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class CandidateRow:
    name: str
    backbone: str
    layer: str
    checkpoint: str | None  # file name under <data_dir>/checkpoints, None when none is needed
    sha256: str | None  # of the file in place; None when missing (or not needed)
    default: bool  # refit every night unless the night's params name others


def default_candidates() -> list[str]:
    """What a night refits when its params name no candidates (lab defaults, ITLOOP_NIGHT_CANDIDATES)."""
    from itloop.settings import get_settings
    from jobs.config import get_worker_config

    named = get_settings().night_defaults.get("candidates")
    if named:
        return [c for c in named if isinstance(c, str)]
    return list(get_worker_config().night_candidates)


def candidate_rows(data_dir: Path) -> list[CandidateRow]:
    """Every builtin candidate (the across-day search is internal and left out), sorted by name."""
    from models.backbones import checkpoint_sha256

    defaults = set(default_candidates())
    rows = []
    for name in sorted(BUILTIN):
        if name == SEARCH:
            continue
        cand = resolve(name)
        path = cand.checkpoint_path(data_dir)
        digest = checkpoint_sha256(path) if path is not None and path.is_file() else None
        rows.append(CandidateRow(name, cand.backbone, cand.layer, cand.checkpoint, digest, name in defaults))
    return rows


def import_checkpoint(
    data_dir: Path, source: Path, *, name: str, force: bool = False
) -> tuple[Path, str, bool]:
    """Copy ``source`` into place for candidate ``name``; returns (destination, sha256, replaced).

    The copy is written next to its destination, loaded into the candidate's backbone, and only
    then renamed into place, so a bad file never replaces a good one.
    """
    from models.backbones import CheckpointError, build_backbone, checkpoint_sha256

    needing = sorted(n for n, spec in BUILTIN.items() if spec.get("checkpoint"))
    if name not in BUILTIN:
        raise ImportRefused(
            f"unknown candidate {name!r}; candidates with a checkpoint: {', '.join(needing)}", 2
        )
    cand = resolve(name)
    dest = cand.checkpoint_path(data_dir)
    if dest is None:
        raise ImportRefused(
            f"candidate {name!r} needs no checkpoint; candidates with one: {', '.join(needing)}", 2
        )
    if not source.is_file():
        raise ImportRefused(f"no such file: {source}", 2)
    digest = checkpoint_sha256(source)
    replaced = dest.is_file()
    if replaced:
        if checkpoint_sha256(dest) == digest:
            return dest, digest, False
        if not force:
            raise ImportRefused(f"{dest} already holds a different file; add --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(source, part)
        try:
            build_backbone(cand.backbone, checkpoint=part, **cand.kwargs)
        except CheckpointError as exc:
            raise ImportRefused(
                f"{source} does not load into {name} ({cand.backbone}): "
                f"{str(exc).replace(str(part), 'the file')}",
                2,
            ) from None
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest, digest, replaced
