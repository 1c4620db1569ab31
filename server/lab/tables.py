"""The lab's fixed inventory: subjects, chronic arrays, their sites, and the rigs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db.base import Base, JSONType, utcnow


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    species: Mapped[str] = mapped_column(String(120), default="Macaca mulatta")
    notes: Mapped[str] = mapped_column(default="")
    # What NWB's Subject (and DANDI) ask for; "" is unknown. Age is an ISO 8601 duration at the
    # time of a session (sessions may override it), date_of_birth ISO 8601 text with its offset.
    sex: Mapped[str] = mapped_column(String(1), default="U", server_default="U")
    age: Mapped[str] = mapped_column(String(40), default="", server_default="")
    date_of_birth: Mapped[str] = mapped_column(String(40), default="", server_default="")
    weight: Mapped[str] = mapped_column(String(40), default="", server_default="")
    strain: Mapped[str] = mapped_column(String(120), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    arrays: Mapped[list[Array]] = relationship(back_populates="subject")


class Array(Base):
    __tablename__ = "arrays"
    __table_args__ = (UniqueConstraint("subject_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    region: Mapped[str] = mapped_column(String(60), default="IT")
    hemisphere: Mapped[str] = mapped_column(String(10), default="")
    # The NWB device the array is (name, manufacturer) and the electrode group's description.
    device: Mapped[str] = mapped_column(String(200), default="", server_default="")
    manufacturer: Mapped[str] = mapped_column(String(200), default="", server_default="")
    description: Mapped[str] = mapped_column(default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="arrays")
    sites: Mapped[list[Site]] = relationship(back_populates="array")


class Site(Base):
    """One recording site; ``site_id`` is the lab's stable name for it across days."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[str] = mapped_column(String(120), unique=True)
    array_id: Mapped[int] = mapped_column(ForeignKey("arrays.id", ondelete="RESTRICT"), index=True)
    electrode: Mapped[str] = mapped_column(String(60), default="")
    unit: Mapped[str] = mapped_column(String(60), default="mua")
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    active: Mapped[bool] = mapped_column(default=True)
    # Electrode position (NWB electrodes x/y/z, in the lab's stereotaxic frame) and its location
    # (brain area; "" falls back to the array's region).
    x: Mapped[float | None] = mapped_column(Float, default=None)
    y: Mapped[float | None] = mapped_column(Float, default=None)
    z: Mapped[float | None] = mapped_column(Float, default=None)
    location: Mapped[str] = mapped_column(String(60), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    array: Mapped[Array] = relationship(back_populates="sites")


class Rig(Base):
    __tablename__ = "rigs"

    id: Mapped[int] = mapped_column(primary_key=True)
    rig_id: Mapped[str] = mapped_column(String(120), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="SET NULL"))
    screen: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
