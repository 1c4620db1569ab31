"""The rig contract's data as plain dataclasses (mirrors DESIGN.md section 5; no server imports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageRef:
    sha256: str
    url: str
    width: int
    height: int
    bytes: int


@dataclass(frozen=True)
class SequenceEntry:
    seq: int
    image_sha256: str
    trial: int
    on_ms: int
    off_ms: int


@dataclass(frozen=True)
class Manifest:
    """A published batch: what to show and in which order. Never changes once published."""

    batch_id: str
    rig_id: str
    published_at: str
    model_version: str | None
    images: tuple[ImageRef, ...]
    sequence: tuple[SequenceEntry, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest; fields the server added later land in ``extra``."""
        known = {"batch_id", "rig_id", "published_at", "model_version", "images", "sequence"}
        return cls(
            batch_id=str(data["batch_id"]),
            rig_id=str(data["rig_id"]),
            published_at=str(data["published_at"]),
            model_version=data.get("model_version"),
            images=tuple(
                ImageRef(
                    sha256=i["sha256"],
                    url=i["url"],
                    width=int(i["width"]),
                    height=int(i["height"]),
                    bytes=int(i["bytes"]),
                )
                for i in data["images"]
            ),
            sequence=tuple(
                SequenceEntry(
                    seq=int(s["seq"]),
                    image_sha256=s["image_sha256"],
                    trial=int(s["trial"]),
                    on_ms=int(s["on_ms"]),
                    off_ms=int(s["off_ms"]),
                )
                for s in data["sequence"]
            ),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out["images"] = [dict(i) for i in out["images"]]
        out["sequence"] = [dict(s) for s in out["sequence"]]
        return {**out, **extra}


@dataclass(frozen=True)
class PresentationEvent:
    """One presentation as the rig saw it. ``event_id`` makes re-posting safe: use f"{batch_id}:{seq}"."""

    event_id: str
    seq: int | None
    image_sha256: str
    onset_s: float
    fixation_ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FetchResult:
    """Where each image of a manifest is on disk, and which were downloaded versus already cached."""

    paths: dict[str, Path]
    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
