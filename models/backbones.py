"""Backbone networks for site models, built by name and loaded from local checkpoints only.

Every backbone takes images in [0, 1] and normalises them itself (an :class:`InputNormalization`
layer inside the returned module), so perturbation budgets, which live in pixel space, never have to
know a network's input statistics. Checkpoints are read from local files; nothing is downloaded.

Checkpoints from MadryLab's ``robustness`` library (adversarially trained ResNet-50s) are accepted
as they come: the state dict may sit under ``"model"`` or ``"state_dict"``, keys carry
``module.model.`` / ``model.`` / ``module.`` prefixes, the attacker's duplicate copy
(``module.attacker.*``) is dropped and the stored normaliser (``normalizer.new_mean/new_std``)
replaces the default ImageNet statistics.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from models.smooth_pool import SmoothPool2d
from models.trainable import trained_vone
from models.vone import vone, vone_energy

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Prefixes stripped from checkpoint keys, longest first so "module.model." wins over "module.".
_PREFIXES = ("module.model.", "model.", "module.", "net.")
_ATTACKER_PREFIXES = ("module.attacker.", "attacker.")
_NORMALIZER_KEYS = {
    "mean": ("normalizer.new_mean", "normalize.new_mean", "normalize.mean"),
    "std": ("normalizer.new_std", "normalize.new_std", "normalize.std"),
}
_N_KEYS_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match the backbone's architecture.

    ``retryable = False``: running the same job again cannot make a file appear, so the job
    system fails the job at once (``jobs.execute``) instead of retrying it.
    """

    retryable = False


class InputNormalization(nn.Module):
    """Map images in [0, 1] to network inputs: ``(x - mean) / std`` per channel.

    Kept as buffers so they move with ``.to(device)`` and are saved in the state dict.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """A network preceded by its input normalisation.

    Attributes
    ----------
    name : str
        Registry name, recorded in model artifacts and feature-cache keys.
    normalize : InputNormalization
    net : nn.Module
        The bare network; feature layers are addressed by their names inside it (``"layer4"``,
        ``"conv2"``...), see :meth:`get_layer`.
    """

    def __init__(self, name: str, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.name = name
        self.normalize = InputNormalization(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def layer_names(self) -> list[str]:
        """Names accepted by :meth:`get_layer` (modules of ``net``)."""
        return [n for n, _ in self.net.named_modules() if n]

    def get_layer(self, name: str) -> nn.Module:
        """Return the module called ``name`` inside ``net`` (or a full path from the backbone root)."""
        modules = dict(self.net.named_modules())
        if name in modules and name:
            return modules[name]
        full = dict(self.named_modules())
        if name in full and name:
            return full[name]
        shown = ", ".join(self.layer_names()[:20])
        raise KeyError(f"backbone {self.name!r} has no layer {name!r}; layers include: {shown}")


# ---------------------------------------------------------------------- small seeded CNNs
def _seeded_init(module: nn.Module, seed: int) -> None:
    """Initialise conv/linear layers from ``seed`` alone, independent of the global RNG state.

    Tests, the demo and the worker must build the same network with no checkpoint.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.05, 0.05, generator=gen)


class SmallCNN(nn.Module):
    """A few conv blocks (conv -> ReLU -> pool), a pooled ``features`` vector and a linear ``fc``.

    Layers are named ``conv1`` ... ``conv{n}``, ``features`` and ``fc`` for feature extraction.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        kernel_sizes: tuple[int, ...],
        first_stride: int,
        num_classes: int,
        pool: type[nn.Module],
    ):
        super().__init__()
        c_in = 3
        for i, (c_out, k) in enumerate(zip(channels, kernel_sizes, strict=True), start=1):
            stride = first_stride if i == 1 else 1
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2), nn.ReLU()]
            if i < len(channels):
                layers.append(pool(2))
            self.add_module(f"conv{i}", nn.Sequential(*layers))
            c_in = c_out
        self.n_blocks = len(channels)
        self.features = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"conv{i}")(x)
        return self.fc(self.features(x))


def small_cnn(seed: int = 0, num_classes: int = 16) -> nn.Module:
    """Four conv blocks (32-64-128-256 channels), about 0.2 GMAC per 224x224 image."""
    net = SmallCNN((32, 64, 128, 256), (5, 3, 3, 3), 2, num_classes, nn.MaxPool2d)
    _seeded_init(net, seed)
    return net


def tiny_cnn(seed: int = 0, num_classes: int = 4) -> nn.Module:
    """Two conv blocks (4-8 channels) with average pooling, for unit tests on any image size."""
    net = SmallCNN((4, 8), (3, 3), 2, num_classes, nn.AvgPool2d)
    _seeded_init(net, seed)
    return net


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50 with random weights (never downloads); load weights via a checkpoint."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


class PixelPool(nn.Module):
    """Pooled pixels as the "features" (layer ``pool``): a linear, smooth front end.

    A readout on it is a low-resolution linear receptive field. It is the natural surrogate
    for a linear-nonlinear population (such as ``models.simulator``'s), and a baseline any CNN
    should beat on real IT data. ``blur=0`` averages blocks (``pixels16``); ``blur > 0`` blurs
    first (``smooth16``, :mod:`models.smooth_pool`), so the model's gradient has no block edges.
    """

    def __init__(self, size: int = 16, num_classes: int = 1, blur: float = 0.0):
        super().__init__()
        self.pool: nn.Module = SmoothPool2d(size, blur) if blur > 0 else nn.AdaptiveAvgPool2d(size)
        self.fc = nn.Linear(3 * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def pixel_pool(size: int = 16, num_classes: int = 1, seed: int = 0, blur: float = 0.0) -> nn.Module:
    net = PixelPool(size, num_classes, blur)
    _seeded_init(net, seed)
    return net


# Bumped when a backbone's output changes under the same name and arguments, so that features
# cached by the previous code are recomputed, not mixed with new ones (models.features.FeatureKey).
# vone_energy 2: images are blurred before the downsampling to the base size (2026-12-01).
BACKBONE_REVISIONS: dict[str, int] = {"vone_energy": 2}


def backbone_revision(name: str) -> int:
    """The code revision of backbone ``name`` (1 unless its output has changed since it was added)."""
    return BACKBONE_REVISIONS.get(name, 1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "pixels": pixel_pool,
    "vone": vone,
    "vone_energy": vone_energy,
    "vone_trained": trained_vone,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
    "tiny_cnn": tiny_cnn,
}


# ---------------------------------------------------------------------- checkpoints
def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a checkpoint file, streamed so large files need little memory."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}; put the weights file there")
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_state_dict(path: Path, weights_only: bool) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return its (still prefixed) tensor state dict."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; put the weights file there")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for corrupt or pickled files
        raise CheckpointError(
            f"could not read checkpoint {path}: {exc.__class__.__name__}: {str(exc)[:300]}"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not contain a tensor state dict")
    return dict(obj)


def clean_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Strip MadryLab / DataParallel wrappers from a state dict.

    Returns
    -------
    weights : dict
        Keys as the bare network names them.
    mean, std : Tensor or None
        The checkpoint's input normaliser, when it has one.
    """
    mean = std = None
    weights: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_ATTACKER_PREFIXES):
            continue  # the attacker holds a second copy of the same model
        bare = key[len("module.") :] if key.startswith("module.") else key
        if bare in _NORMALIZER_KEYS["mean"]:
            mean = value
            continue
        if bare in _NORMALIZER_KEYS["std"]:
            std = value
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        weights[key] = value
    return weights, mean, std


def _check_keys(path: Path, net: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming the file and the first offending keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            more = f" (+{len(items) - _N_KEYS_SHOWN} more)" if len(items) > _N_KEYS_SHOWN else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_N_KEYS_SHOWN])}{more}")
    raise CheckpointError(f"checkpoint {path} does not match the architecture: " + "; ".join(parts))


def _is_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in (*net.parameters(), *net.buffers()))


def _build_empty(name: str, kw: Mapping[str, object]) -> nn.Module:
    """Build the architecture without initialising weights that a checkpoint will overwrite.

    Random initialisation of ResNet-50 costs about a second; on the meta device it is free and the
    checkpoint's tensors are assigned in place. Falls back to a normal build if the constructor
    cannot run on meta.
    """
    try:
        with torch.device("meta"):
            return BACKBONES[name](**kw)
    except Exception:  # constructor does something meta tensors do not support
        return BACKBONES[name](**kw)


def build_backbone(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    weights_only: bool = True,
    **kw: object,
) -> Backbone:
    """Build a registered backbone, optionally loading weights from a local checkpoint.

    Parameters
    ----------
    name : str
        Key of :data:`BACKBONES`.
    checkpoint : str or Path or None
        Local file with a state dict (plain, DataParallel or MadryLab ``robustness`` format).
        ``None`` keeps the (seeded, for the small CNNs) initial weights.
    weights_only : bool, default True
        Refuse pickled Python objects in the file (safe loading). Set False only for trusted files
        that store non-tensor objects.
    **kw
        ``mean`` / ``std`` override the input normalisation (default ImageNet; a checkpoint's own
        normaliser wins over both); everything else goes to the registry's constructor (``seed``,
        ``num_classes``).

    Returns
    -------
    Backbone
        In eval mode, on CPU; inputs are images in [0, 1].
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    mean: tuple[float, ...] = tuple(kw.pop("mean", IMAGENET_MEAN))  # type: ignore[arg-type]
    std: tuple[float, ...] = tuple(kw.pop("std", IMAGENET_STD))  # type: ignore[arg-type]
    if checkpoint is None:
        net = BACKBONES[name](**kw)
    else:
        path = Path(checkpoint)
        weights, ck_mean, ck_std = clean_state_dict(_read_state_dict(path, weights_only))
        net = _build_empty(name, kw)
        _check_keys(path, net, weights)
        expected = net.state_dict()
        weights = {k: v.to(expected[k].dtype) for k, v in weights.items()}  # e.g. fp16 files
        net.load_state_dict(weights, strict=True, assign=_is_meta(net))
        if _is_meta(net):  # a non-persistent buffer was not in the file: build for real
            net = BACKBONES[name](**kw)
            net.load_state_dict(weights, strict=True)
        if ck_mean is not None and ck_std is not None:
            mean = tuple(ck_mean.flatten().tolist())
            std = tuple(ck_std.flatten().tolist())
            logger.info("using the input normaliser stored in %s: mean=%s std=%s", path, mean, std)
        elif (ck_mean is None) != (ck_std is None):
            raise CheckpointError(f"checkpoint {path} has a normaliser mean or std but not both")
    backbone = Backbone(name, net, mean, std)
    return backbone.eval()
