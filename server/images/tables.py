"""Content-addressed images with their lineage, and named clean image sets."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db.base import Base, JSONType, utcnow


class ImageKind(StrEnum):
    """What an image is; also its role in a batch (one set of strings for both).

    ``random`` twins are the model-free baseline (a random direction of the same L2 size).
    """

    clean = "clean"
    reference = "reference"
    perturbed = "perturbed"
    targeted = "targeted"
    random = "random"


class Direction(StrEnum):
    """Which way a twin pushes its site: ``up``/``down`` (sign +1/-1 in the science code), or
    ``target:<category>`` for a targeted super-stimulus (:meth:`toward`)."""

    up = "up"
    down = "down"

    @property
    def sign(self) -> int:
        return 1 if self is Direction.up else -1

    @classmethod
    def of_sign(cls, sign: float) -> Direction:
        return cls.up if sign > 0 else cls.down

    @staticmethod
    def toward(category: str) -> str:
        """The stored direction of a targeted twin."""
        return f"target:{category}"


class Image(Base):
    """An image as the rig shows it: ``sha256`` is the hash of the PNG bytes served.

    ``kind`` is clean, reference, perturbed, targeted or random (model-free baseline);
    perturbed images carry their parent, model version, site, epsilon, direction and seed.
    """

    __tablename__ = "images"
    __table_args__ = (Index(None, "parent_id", "site_pk", "epsilon"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int]
    height: Mapped[int]
    n_bytes: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20), default=ImageKind.clean, index=True)
    category: Mapped[str | None] = mapped_column(String(120), default=None)
    source_name: Mapped[str | None] = mapped_column(String(400), default=None)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    site_pk: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    epsilon: Mapped[float | None] = mapped_column(Float, default=None)
    direction: Mapped[str | None] = mapped_column(String(20), default=None)
    seed: Mapped[int | None] = mapped_column(BigInteger, default=None)  # engine seeds are 63-bit
    predicted_change: Mapped[float | None] = mapped_column(Float, default=None)
    achieved_l2: Mapped[float | None] = mapped_column(Float, default=None)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageSet(Base):
    """A named, immutable set of clean (or reference) images.

    A withdrawn set (``withdrawn_at`` set) stays for the record (its images may have been shown
    already) but no later night or day-0 batch draws from it, and it no longer fixes the lab's
    image size.
    """

    __tablename__ = "image_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(default="")
    is_reference: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(default=None)
    withdrawn_reason: Mapped[str] = mapped_column(default="", server_default="")


class ImageSetMember(Base):
    __tablename__ = "image_set_members"

    image_set_id: Mapped[int] = mapped_column(
        ForeignKey("image_sets.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)
