"""Candidate surrogate models: which backbone, which layer, which weights file.

Weights only ever come from local files under ``<data_dir>/checkpoints``: the lab
copies e.g. the MadryLab ``robustness`` ImageNet L2 eps=3 ResNet-50 there once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itloop.errors import InvalidInput

if TYPE_CHECKING:
    from models.features import Pool  # typing only: resolving a candidate must not import torch

SEARCH = "search"
FITS = ("ridge", "pairs", "trained", "factorized", "blend")
ENSEMBLE = "ensemble"  # the mean of the night's candidates: a source, not a refitted candidate

BUILTIN: dict[str, dict[str, Any]] = {
    "resnet50": {"backbone": "resnet50", "layer": "layer4", "pool": "avg", "checkpoint": "resnet50.pt"},
    "resnet50_l2_eps3": {
        "backbone": "resnet50",
        "layer": "layer4",
        "pool": "avg",
        "checkpoint": "resnet50_l2_eps3.pt",
    },
    "resnet50_layer3": {
        "backbone": "resnet50",
        "layer": "layer3",
        "pool": "avg",
        "checkpoint": "resnet50.pt",
    },
    # Checkpoint-free, seeded networks for the demo and the tests.
    "small_cnn": {"backbone": "small_cnn", "layer": "conv3", "pool": "avg", "kwargs": {"seed": 0}},
    "small_cnn_conv4": {"backbone": "small_cnn", "layer": "conv4", "pool": "avg", "kwargs": {"seed": 0}},
    "pixels16": {"backbone": "pixels", "layer": "pool", "pool": "flatten", "kwargs": {"size": 16}},
    # pixels16 with a Gaussian blur of 0.75 block before pooling (models.smooth_pool): the same
    # linear model, but its gradient (and so its twins) has no block edges.
    "smooth16": {
        "backbone": "pixels",
        "layer": "pool",
        "pool": "flatten",
        "kwargs": {"size": 16, "blur": 0.75},
    },
    "tiny_cnn": {"backbone": "tiny_cnn", "layer": "conv2", "pool": "avg", "kwargs": {"seed": 0}},
    # Checkpoint-free and V1-like: a fixed multi-scale Gabor bank with divisive normalisation
    # (models.vone), whose gradients stay at the spatial scales and orientations V1 passes on.
    "vone": {"backbone": "vone", "layer": "output", "pool": "flatten"},
    # Squared complex-cell energies at coarse scales (models.vone.vone_energy): a quadratic model
    # whose gradient follows the image's local phase, for sites no linear pixel model can target.
    "vone_energy": {"backbone": "vone_energy", "layer": "output", "pool": "flatten"},
    # The same energies at 8x8 positions with a factorized readout (models.factorized_readout):
    # per site, where it looks times what it looks for, so its gradient stays local.
    "vone_energy_map": {
        "backbone": "vone_energy",
        "layer": "output",
        "pool": "flatten",
        "kwargs": {"grid": 8},
        "fit": "factorized",
    },
    # The mean of vone_energy's 2x2 ridge readout and a 4x4 factorized one on the same energies
    # (models.blended_readout): one candidate, with its own predictivity, that transfers better
    # than either readout alone on every energy-model family measured. With the colour cross
    # energies (models.vone.VOneFrontEnd colour_pairs) it can model a complex cell of any colour;
    # with one whole-image octave (global_octaves, 0.67 cycles per image), a cell as large as the image.
    "vone_energy_blend": {
        "backbone": "vone_energy",
        "layer": "output",
        "pool": "flatten",
        "kwargs": {"grid": [2, 4], "colour_pairs": True, "global_octaves": 1},
        "fit": "blend",
    },
    # Across-day search (models.search): each site's gradient estimated from the measured changes
    # of every twin on record; a linear model in full-resolution pixels, fitted on pairs only.
    SEARCH: {"backbone": "pixels", "layer": "pool", "pool": "flatten", "fit": "pairs"},
    # Learns from the lab's own responses, twins included (models.trainable): the V1-like front
    # end with a trained core and per-site readouts, warm-started from the previous night.
    "vone_trained": {"backbone": "vone_trained", "layer": "sites", "pool": "flatten", "fit": "trained"},
    # A finer linear pixel model than pixels16: learns smooth linear receptive fields.
    "pixels32": {"backbone": "pixels", "layer": "pool", "pool": "flatten", "kwargs": {"size": 32}},
}


@dataclass(frozen=True)
class Candidate:
    name: str
    backbone: str
    layer: str
    pool: Pool = "avg"  # checked when the features are extracted (a dict spec may say anything)
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # "ridge": readout on frozen backbone features; "pairs": models.search on twin pairs;
    # "trained": the core is trained on the responses too (models.trainable);
    # "factorized": a spatial map times channel weights per site (models.factorized_readout);
    # "blend": the mean of a ridge readout on the first grid and factorized ones on the others
    # (models.blended_readout)
    fit: str = "ridge"

    def checkpoint_path(self, data_dir: Path) -> Path | None:
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        return path if path.is_absolute() else data_dir / "checkpoints" / path


def resolve(spec: str | dict[str, Any]) -> Candidate:
    """A candidate from its builtin name or a full dict spec (``name``, ``backbone``, ``layer``...)."""
    if isinstance(spec, str):
        if spec not in BUILTIN:
            raise InvalidInput(f"unknown candidate model {spec!r}; builtin: {', '.join(sorted(BUILTIN))}")
        return Candidate(name=spec, **BUILTIN[spec])
    try:
        cand = Candidate(**spec)
    except TypeError as exc:
        raise InvalidInput(f"bad candidate spec {spec!r}: {exc}") from None
    if cand.fit not in FITS:
        raise InvalidInput(f"candidate {cand.name!r}: unknown fit {cand.fit!r}; one of {', '.join(FITS)}")
    grid = cand.kwargs.get("grid")
    if cand.fit == "factorized" and (not isinstance(grid, int) or isinstance(grid, bool) or grid < 1):
        raise InvalidInput(f"candidate {cand.name!r}: factorized needs an integer kwargs 'grid' >= 1")
    grids = grid if isinstance(grid, list | tuple) else []
    whole = all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grids)
    if cand.fit == "blend" and (len(grids) < 2 or not whole):
        raise InvalidInput(
            f"candidate {cand.name!r}: blend needs kwargs 'grid', a list of >= 2 integers >= 1"
        )
    return cand
