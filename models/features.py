"""Features of one named backbone layer, batched for fitting and differentiable for synthesis.

The layer's output is captured with a forward hook and the forward pass is stopped right after it,
so deep backbones do not pay for the layers above the readout. :class:`FeatureCache` keeps
per-image feature vectors on disk so that nightly refits only run the backbone on new images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.backbones import Backbone
from models.files import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

Pool = Literal["avg", "max", "flatten", "none"]
POOLS: tuple[str, ...] = ("avg", "max", "flatten", "none")


class _StopForward(Exception):
    """Raised by the hook once the wanted layer has run; carries nothing, the hook stores the output."""


def pool_features(out: torch.Tensor, pool: str) -> torch.Tensor:
    """Reduce a layer output to one vector per image.

    ``avg`` / ``max`` pool over spatial positions (identity for outputs that are already vectors),
    ``flatten`` keeps every unit, ``none`` returns the output unchanged.
    """
    if pool == "none":
        return out
    if pool == "flatten":
        return out.flatten(1)
    if out.ndim <= 2:
        return out
    dims = tuple(range(2, out.ndim))
    if pool == "avg":
        return out.mean(dim=dims)
    if pool == "max":
        return out.amax(dim=dims)
    raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")


def _find_layer(backbone: nn.Module, layer: str) -> nn.Module:
    if isinstance(backbone, Backbone):
        return backbone.get_layer(layer)
    modules = dict(backbone.named_modules())
    if layer not in modules or not layer:
        raise KeyError(f"backbone has no layer {layer!r}")
    return modules[layer]


class FeatureExtractor(nn.Module):
    """Pooled features of one named layer of a backbone.

    Parameters
    ----------
    backbone : nn.Module
        Usually a :class:`~models.backbones.Backbone` (takes images in [0, 1]).
    layer : str
        Module name, e.g. ``"layer4"`` for ResNet-50 or ``"conv3"`` / ``"features"`` for the small
        CNNs.
    pool : {"avg", "max", "flatten", "none"}
        See :func:`pool_features`.

    Notes
    -----
    ``forward`` keeps the autograd graph (the encoder differentiates through it); ``extract`` is the
    batched, no-grad path for fitting.
    """

    def __init__(self, backbone: nn.Module, layer: str, pool: Pool = "avg"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
        self.backbone = backbone
        self.layer = layer
        self.pool = pool
        self._target = _find_layer(backbone, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` (B, 3, H, W) in [0, 1], differentiable with respect to ``x``."""
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            captured.append(out)
            raise _StopForward

        handle = self._target.register_forward_hook(hook)
        try:
            self.backbone(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {self.layer!r} did not run in the backbone's forward pass")
        return pool_features(captured[0], self.pool)

    def _device(self, images: torch.Tensor) -> torch.device:
        for tensor in (*self.backbone.parameters(), *self.backbone.buffers()):
            return tensor.device
        return images.device

    @torch.no_grad()
    def extract(
        self,
        images: torch.Tensor,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Features of many images, in batches, without gradients.

        Parameters
        ----------
        images : Tensor of shape (N, 3, H, W)
            Pixel values in [0, 1].
        batch_size : int, default 64
        device : str or torch.device, optional
            Where the backbone runs; defaults to the backbone's device. The backbone is not moved.
        dtype : torch.dtype, optional
            Autocast dtype (e.g. ``torch.bfloat16`` on CUDA for ~2x throughput); ``None`` runs in the
            backbone's own precision.
        channels_last : bool, default False
            Feed batches in channels-last memory format (faster convolutions on CUDA tensor cores).

        Returns
        -------
        Tensor of shape (N, F)
            On the device of ``images``; float32 after half-precision autocast, otherwise the
            backbone's dtype.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        dev = torch.device(device) if device is not None else self._device(images)
        was_training = self.backbone.training
        self.backbone.eval()
        chunks = []
        try:
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(dev, non_blocking=True)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                ctx = (
                    torch.autocast(device_type=dev.type, dtype=dtype)
                    if dtype is not None
                    else contextlib.nullcontext()
                )
                with ctx:
                    feats = self.forward(batch)
                feats = feats.flatten(1)
                if feats.dtype in (torch.float16, torch.bfloat16):
                    feats = feats.float()
                chunks.append(feats.to(images.device))
        finally:
            self.backbone.train(was_training)
        if not chunks:
            return torch.empty(0, 0, device=images.device)
        return torch.cat(chunks)


# ---------------------------------------------------------------------- on-disk cache
def tensor_sha256(image: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an image's values (shape and dtype included), for callers without file hashes."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines a feature vector apart from the image itself."""

    backbone: str
    checkpoint_sha256: str | None
    layer: str
    pool: str
    backbone_kwargs: Mapping[str, object] = field(default_factory=dict)
    # The backbone's code revision (models.backbones.backbone_revision): a fixed front end whose
    # output changes under the same name and arguments must not meet its old cached vectors.
    revision: int = 1

    def digest(self) -> str:
        """Stable short hash used as the cache folder name (revision 1 keeps the original names)."""
        fields: dict[str, object] = {
            "backbone": self.backbone,
            "checkpoint_sha256": self.checkpoint_sha256,
            "layer": self.layer,
            "pool": self.pool,
            "backbone_kwargs": dict(self.backbone_kwargs),
        }
        if self.revision != 1:
            fields["revision"] = self.revision
        payload = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


class FeatureCache:
    """Per-image feature vectors on disk: ``root/<key digest>/<sha[:2]>/<sha>.npy``.

    One small file per image keeps additions cheap (a night adds a few hundred images) and makes
    writes atomic (temp file + ``os.replace``), so a crashed night never leaves a torn vector.

    Parameters
    ----------
    root : str or Path
        Directory owned by the caller; created on first write.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, key: FeatureKey) -> Path:
        return self.root / key.digest()

    def _path(self, key: FeatureKey, image_sha256: str) -> Path:
        if len(image_sha256) < 8 or not all(c in "0123456789abcdef" for c in image_sha256):
            raise ValueError(f"image hash must be a lowercase hex digest, got {image_sha256!r}")
        return self._dir(key) / image_sha256[:2] / f"{image_sha256}.npy"

    def get(self, key: FeatureKey, image_sha256: str) -> np.ndarray | None:
        """Cached vector for one image, or None."""
        path = self._path(key, image_sha256)
        if not path.is_file():
            return None
        return np.load(path, allow_pickle=False)

    def put(self, key: FeatureKey, image_sha256: str, features: np.ndarray | torch.Tensor) -> None:
        """Store one vector atomically."""
        arr = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        path = self._path(key, image_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self._dir(key) / "key.json"
        if not meta.exists():
            atomic_write_bytes(
                meta,
                json.dumps(
                    key.__dict__ | {"backbone_kwargs": dict(key.backbone_kwargs)}, default=str, sort_keys=True
                ).encode(),
            )
        with atomic_write(path) as f:
            np.save(f, np.ascontiguousarray(arr))

    def missing(self, key: FeatureKey, image_sha256s: Sequence[str]) -> list[int]:
        """Indices of images with no cached vector."""
        return [i for i, h in enumerate(image_sha256s) if not self._path(key, h).is_file()]

    def get_or_compute(
        self,
        key: FeatureKey,
        images: torch.Tensor,
        image_sha256s: Sequence[str],
        extractor: FeatureExtractor,
        **extract_kw: object,
    ) -> np.ndarray:
        """Features for all images, running ``extractor`` only on those not cached yet.

        Returns
        -------
        ndarray of shape (N, F), float32
        """
        if len(image_sha256s) != images.shape[0]:
            raise ValueError("need one hash per image")
        todo = self.missing(key, image_sha256s)
        if todo:
            feats = extractor.extract(images[todo], **extract_kw).cpu().numpy()  # type: ignore[arg-type]
            for row, i in zip(feats, todo, strict=True):
                self.put(key, image_sha256s[i], row)
            logger.info(
                "feature cache %s: computed %d of %d images", key.digest()[:8], len(todo), len(image_sha256s)
            )
        return np.stack([self._load(key, h) for h in image_sha256s]).astype(np.float32, copy=False)

    def _load(self, key: FeatureKey, h: str) -> np.ndarray:
        arr = self.get(key, h)
        if arr is None:
            raise FileNotFoundError(f"feature cache lost the entry for image {h}")
        return arr

    def __iter__(self) -> Iterator[str]:
        """Digests of the feature keys present under ``root``."""
        if not self.root.is_dir():
            return iter(())
        return iter(sorted(p.name for p in self.root.iterdir() if p.is_dir()))
