"""Response shapes for images, their lineage and clean image sets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.paging import Page


class ImageBase(BaseModel):
    sha256: str
    width: int
    height: int
    kind: str
    category: str | None = None


class ImageRead(ImageBase):
    model_config = ConfigDict(from_attributes=True)

    bytes: int = Field(validation_alias="n_bytes")
    source_name: str | None = None


class ImageLineage(ImageBase):
    """Everything known about how an image was made (DESIGN.md section 5, lineage)."""

    bytes: int
    source_name: str | None
    parent_sha256: str | None = Field(description="the clean image this one perturbs")
    model_version: str | None
    site_id: str | None
    epsilon: float | None
    direction: str | None
    seed: int | None
    predicted_change: float | None
    achieved_l2: float | None
    provenance: dict[str, Any]
    created_at: datetime


class ImageSetBase(BaseModel):
    name: str
    description: str = ""
    is_reference: bool = False


class ImageSetRead(ImageSetBase):
    id: int
    n_images: int
    created_at: datetime
    withdrawn_at: datetime | None = Field(
        default=None, description="when the set was withdrawn: nights no longer draw from it"
    )
    withdrawn_reason: str = ""


class ImageSetWithdraw(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why, for the record")


class ImageSetDetail(ImageSetRead):
    images: list[ImageRead]


class ImageSetPage(Page[ImageSetRead]):
    """One page of ImageSetRead (:class:`server.paging.Page`)."""
