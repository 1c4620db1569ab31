"""Request and response shapes for subjects, arrays, sites and rigs (XBase / XCreate / XRead / XPage)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
# ISO 8601 duration as NWB and DANDI want a subject's age: P7Y, P2Y6M, P400D, a range P7Y/P8Y.
_PART = r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?"
ISO_DURATION = rf"^{_PART}(/{_PART})?$"


def iso_duration(value: str) -> str:
    """'' (unknown) or an ISO 8601 duration such as P7Y: nwbinspector's DANDI config refuses others."""
    if value and not re.match(ISO_DURATION, value):
        raise ValueError(f"{value!r} is not an ISO 8601 duration such as P7Y, P2Y6M or P400D")
    return value


def aware_or_none(value: Any) -> Any:
    """Stored as ISO 8601 text ("" when unknown); a datetime without an offset is refused, since
    NWB and DANDI need to know which clock it was on."""
    if value in ("", None):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError("needs a time zone offset, e.g. 2026-03-01T09:00:00-05:00")
    return value


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class SubjectBase(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=NAME)
    species: str = Field(default="Macaca mulatta", max_length=120, description="Latin binomial")
    notes: str = ""
    sex: Literal["M", "F", "U", "O"] = Field(default="U", description="M, F, U (unknown) or O (other)")
    age: str = Field(
        default="",
        max_length=40,
        description="ISO 8601 duration (P7Y); sessions may give the age on their day instead",
    )
    date_of_birth: datetime | None = Field(default=None, description="with a time zone offset")
    weight: str = Field(default="", max_length=40, description="with its unit, e.g. '9 kg'")
    strain: str = Field(default="", max_length=120)

    _dob = field_validator("date_of_birth", mode="before")(aware_or_none)
    _age = field_validator("age")(iso_duration)


class SubjectCreate(SubjectBase):
    pass


class SubjectRead(SubjectBase):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime


class SubjectPage(Page):
    items: list[SubjectRead]


class ArrayBase(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=NAME)
    region: str = Field(default="IT", max_length=60)
    hemisphere: str = Field(default="", max_length=10)
    device: str = Field(default="", max_length=200, description="NWB device name, e.g. 'Utah array 96ch'")
    manufacturer: str = Field(default="", max_length=200, description="e.g. 'Blackrock Microsystems'")
    description: str = Field(default="", max_length=2000)


class ArrayCreate(ArrayBase):
    subject: str | None = Field(
        default=None, description="subject name; taken from the path on /subjects/{name}/arrays"
    )


class ArrayRead(ArrayBase):
    id: int
    subject: str
    n_sites: int = 0
    created_at: datetime


class ArrayPage(Page):
    items: list[ArrayRead]


class SiteBase(BaseModel):
    site_id: str = Field(
        min_length=1, max_length=120, pattern=NAME, description="the lab's stable name for the site"
    )
    array: str = Field(min_length=1, max_length=120, description="array name")
    electrode: str = Field(default="", max_length=60)
    unit: str = Field(default="mua", max_length=60)
    meta: dict[str, Any] = Field(default_factory=dict)
    active: bool = True
    x: float | None = Field(default=None, allow_inf_nan=False, description="electrode position (NWB x)")
    y: float | None = Field(default=None, allow_inf_nan=False)
    z: float | None = Field(default=None, allow_inf_nan=False)
    location: str = Field(default="", max_length=60, description="brain area; '' means the array's region")


class SiteCreate(SiteBase):
    subject: str | None = Field(
        default=None, description="subject name; needed only when two subjects have an array of that name"
    )


class SiteRead(SiteBase):
    id: int
    subject: str
    created_at: datetime


class SitePage(Page):
    items: list[SiteRead]


class SiteRegistration(BaseModel):
    """What a bulk registration did: re-registering identical sites is a no-op, not an error."""

    created: int
    existing: int
    items: list[SiteRead]


class RigBase(BaseModel):
    rig_id: str = Field(min_length=1, max_length=120, pattern=NAME)
    name: str = Field(default="", max_length=200)
    screen: dict[str, Any] = Field(
        default_factory=dict,
        description="the display: size_px ([w, h]), refresh_hz, distance_cm, width_cm (visible width) or "
        "deg_per_px; published manifests state it as `display` (docs/rig-client.md)",
    )


class RigCreate(RigBase):
    subject: str | None = None


class RigRead(RigBase):
    id: int
    subject: str | None
    created_at: datetime


class RigPage(Page):
    items: list[RigRead]
