"""Versioned site-model artifacts: everything needed to rebuild an encoder, and what it was fit on.

One ``.npz`` file per model version holds the readout arrays, array-valued metrics and a JSON
metadata record. It is written to a temporary file and moved into place with ``os.replace``, so a
reader never sees half a model. Backbone weights are not copied: the artifact stores the checkpoint's
SHA-256 and :meth:`ModelArtifact.to_encoder` refuses a file with a different hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.backbones import CheckpointError, build_backbone, checkpoint_sha256
from models.blended_readout import BlendedReadout
from models.encoder import SiteEncoder
from models.factorized_readout import FactorizedRidgeCV
from models.files import atomic_write
from models.readout import MultiRidgeCV

FORMAT_VERSION = 1
_ARRAYS = ("coef", "intercept", "alpha", "x_mean", "x_scale")


@dataclass
class ModelArtifact:
    """A fitted site model.

    Attributes
    ----------
    backbone : str
        Registry name (see :data:`models.backbones.BACKBONES`).
    checkpoint_sha256 : str or None
        Hash of the weights file; None for seeded, checkpoint-free backbones.
    backbone_kwargs : dict
        Constructor arguments, e.g. ``{"seed": 0}``.
    layer, pool : str
    site_ids : list of str
        Column order of the readout.
    coef : ndarray of shape (n_features, n_sites)
        Readout weights in raw feature units.
    intercept, alpha : ndarray of shape (n_sites,)
    x_mean, x_scale : ndarray of shape (n_features,)
        Standardisation used during the fit (already folded into ``coef``; kept for the record).
    metrics : dict
        Scalars (JSON) or ndarrays (stored as arrays), e.g. per-site ceiled predictivity.
    training : dict
        JSON description of the data: session ids, image hashes, dates.
    """

    backbone: str
    checkpoint_sha256: str | None
    backbone_kwargs: dict[str, Any]
    layer: str
    pool: str
    site_ids: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    alpha: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_readout(
        cls,
        readout: MultiRidgeCV | FactorizedRidgeCV | BlendedReadout,
        *,
        backbone: str,
        layer: str,
        pool: str,
        site_ids: list[str],
        checkpoint_sha256: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> ModelArtifact:
        """Package a fitted :class:`MultiRidgeCV` with its backbone description."""
        if not hasattr(readout, "coef_"):
            raise ValueError("readout is not fitted")
        if readout.coef_.shape[1] != len(site_ids):
            raise ValueError(f"{len(site_ids)} site ids for a readout of {readout.coef_.shape[1]} sites")
        return cls(
            backbone=backbone,
            checkpoint_sha256=checkpoint_sha256,
            backbone_kwargs=dict(backbone_kwargs or {}),
            layer=layer,
            pool=pool,
            site_ids=[str(s) for s in site_ids],
            coef=np.array(readout.coef_),
            intercept=np.array(readout.intercept_),
            alpha=np.array(readout.alpha_),
            x_mean=np.array(readout.x_mean_),
            x_scale=np.array(readout.x_scale_),
            metrics=dict(metrics or {}),
            training=dict(training or {}),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the artifact atomically to ``path`` (an ``.npz`` file) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        scalar_metrics: dict[str, Any] = {}
        for key, value in self.metrics.items():
            if isinstance(value, np.ndarray):
                arrays[f"metrics/{key}"] = value
            else:
                scalar_metrics[key] = value
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "checkpoint_sha256": self.checkpoint_sha256,
            "backbone_kwargs": self.backbone_kwargs,
            "layer": self.layer,
            "pool": self.pool,
            "site_ids": self.site_ids,
            "metrics": scalar_metrics,
            "training": self.training,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        with atomic_write(path) as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelArtifact:
        """Read an artifact written by :meth:`save` (no pickles are loaded)."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported artifact format {meta.get('format_version')!r}")
            arrays = {name: data[name] for name in _ARRAYS}
            metrics: dict[str, Any] = dict(meta["metrics"])
            for key in data.files:
                if key.startswith("metrics/"):
                    metrics[key[len("metrics/") :]] = data[key]
        return cls(
            backbone=meta["backbone"],
            checkpoint_sha256=meta["checkpoint_sha256"],
            backbone_kwargs=meta["backbone_kwargs"],
            layer=meta["layer"],
            pool=meta["pool"],
            site_ids=list(meta["site_ids"]),
            metrics=metrics,
            training=meta["training"],
            **arrays,
        )

    # ------------------------------------------------------------------ use
    def to_readout(self) -> MultiRidgeCV:
        """A fitted :class:`MultiRidgeCV` carrying this artifact's weights (for ``predict``)."""
        r = MultiRidgeCV()
        r.coef_, r.intercept_, r.alpha_ = self.coef, self.intercept, self.alpha
        r.x_mean_, r.x_scale_ = self.x_mean, self.x_scale
        r.y_mean_ = self.intercept + self.x_mean @ self.coef
        r.n_features_in_ = self.coef.shape[0]
        return r

    def to_encoder(self, checkpoint_path: str | Path | None = None) -> SiteEncoder:
        """Rebuild the encoder; the checkpoint must be the very file the model was fit with."""
        if self.checkpoint_sha256 is not None:
            if checkpoint_path is None:
                raise CheckpointError(
                    f"model needs the {self.backbone} checkpoint with sha256 "
                    f"{self.checkpoint_sha256}; none given"
                )
            actual = checkpoint_sha256(checkpoint_path)
            if actual != self.checkpoint_sha256:
                raise CheckpointError(
                    f"checkpoint {checkpoint_path} has sha256 {actual}, "
                    f"the model was fit with {self.checkpoint_sha256}"
                )
        elif checkpoint_path is not None:
            raise CheckpointError(f"model was fit without a checkpoint; refusing {checkpoint_path}")
        backbone = build_backbone(self.backbone, checkpoint_path, **self.backbone_kwargs)
        return SiteEncoder(backbone, self.layer, self.pool, self.coef.T, self.intercept, self.site_ids)  # type: ignore[arg-type]
