"""The lab's fixed inventory: subjects, chronic arrays, their sites, and the rigs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db.base import Base, JSONType, utcnow


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    species: Mapped[str] = mapped_column(String(120), default="Macaca mulatta")
    notes: Mapped[str] = mapped_column(default="")
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
