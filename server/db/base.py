"""Declarative base with a constraint naming convention, so migrations are stable on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, MetaData, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm.attributes import set_committed_value

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), plain JSON elsewhere.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# 64-bit keys on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Tag a naive datetime as UTC: SQLite drops the offset, and every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


def _datetime_keys(mapper: Any) -> tuple[str, ...]:
    keys = tuple(
        prop.key
        for prop in mapper.column_attrs
        if isinstance(getattr(prop.columns[0], "type", None), DateTime)
    )
    return keys


@event.listens_for(Base, "load", propagate=True)
def _utc_on_load(target: Any, _context: Any) -> None:
    """SQLite forgets time zones: every stored time is UTC, so say so on the way out.

    PostgreSQL already returns aware datetimes, for which this is a no-op. Values are set
    without history, so loading never makes a row dirty.
    """
    state = target.__dict__
    for key in _datetime_keys(type(target).__mapper__):
        value = state.get(key)
        if isinstance(value, datetime) and value.tzinfo is None:
            set_committed_value(target, key, as_utc(value))


event.listen(Base, "refresh", lambda target, ctx, attrs: _utc_on_load(target, ctx), propagate=True)
