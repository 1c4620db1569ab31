"""Request and response shapes for subjects, arrays, sites and rigs (XBase / XCreate / XRead / XPage)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.paging import Page

NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"


class SubjectBase(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=NAME)
    species: str = Field(default="Macaca mulatta", max_length=120)
    notes: str = ""


class SubjectCreate(SubjectBase):
    pass


class SubjectRead(SubjectBase):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime


class SubjectPage(Page[SubjectRead]):
    """One page of SubjectRead (:class:`server.paging.Page`)."""


class ArrayBase(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=NAME)
    region: str = Field(default="IT", max_length=60)
    hemisphere: str = Field(default="", max_length=10)


class ArrayCreate(ArrayBase):
    subject: str | None = Field(
        default=None, description="subject name; taken from the path on /subjects/{name}/arrays"
    )


class ArrayRead(ArrayBase):
    id: int
    subject: str
    n_sites: int = 0
    created_at: datetime


class ArrayPage(Page[ArrayRead]):
    """One page of ArrayRead (:class:`server.paging.Page`)."""


class SiteBase(BaseModel):
    site_id: str = Field(
        min_length=1, max_length=120, pattern=NAME, description="the lab's stable name for the site"
    )
    array: str = Field(min_length=1, max_length=120, description="array name")
    electrode: str = Field(default="", max_length=60)
    unit: str = Field(default="mua", max_length=60)
    meta: dict[str, Any] = Field(default_factory=dict)
    active: bool = True


class SiteCreate(SiteBase):
    subject: str | None = Field(
        default=None, description="subject name; needed only when two subjects have an array of that name"
    )


class SiteRead(SiteBase):
    id: int
    subject: str
    created_at: datetime


class SitePage(Page[SiteRead]):
    """One page of SiteRead (:class:`server.paging.Page`)."""


class SiteRegistration(BaseModel):
    """What a bulk registration did: re-registering identical sites is a no-op, not an error."""

    created: int
    existing: int
    items: list[SiteRead]


class RigBase(BaseModel):
    rig_id: str = Field(min_length=1, max_length=120, pattern=NAME)
    name: str = Field(default="", max_length=200)
    screen: dict[str, Any] = Field(default_factory=dict, description="e.g. size_px, distance_cm, deg_per_px")


class RigCreate(RigBase):
    subject: str | None = None


class RigRead(RigBase):
    id: int
    subject: str | None
    created_at: datetime


class RigPage(Page[RigRead]):
    """One page of RigRead (:class:`server.paging.Page`)."""
