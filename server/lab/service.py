"""Lab inventory: subjects, arrays, sites (stable ``site_id`` across days) and rigs.

Creation is idempotent where scripts re-run: registering what already exists with the
same data returns the existing rows; the same name with different data is a Conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from server.errors import Conflict, InvalidInput, NotFound
from server.lab.tables import Array, Rig, Site, Subject


def _differences(row: Any, wanted: dict[str, Any]) -> list[str]:
    return [f"{k}: {getattr(row, k)!r} != {v!r}" for k, v in wanted.items() if getattr(row, k) != v]


def _create_or_match(
    session: Session, model: Any, key: dict[str, Any], wanted: dict[str, Any], label: str
) -> Any:
    """Registration is idempotent: return the row named by ``key`` if it matches ``wanted``,
    create it if absent, and refuse (409) a same-named row with other data."""
    existing = session.scalar(select(model).filter_by(**key))
    if existing is not None:
        diff = _differences(existing, wanted)
        if diff:
            raise Conflict(f"{label} already exists with other data ({'; '.join(diff)})")
        return existing
    row = model(**key, **wanted)
    session.add(row)
    session.flush()
    return row


def create_subject(
    *,
    session: Session,
    name: str,
    species: str = "Macaca mulatta",
    notes: str = "",
    sex: str = "U",
    age: str = "",
    date_of_birth: datetime | None = None,
    weight: str = "",
    strain: str = "",
) -> Subject:
    """Create a subject, or return it when it already exists with the same data.

    The NWB fields (sex, age, date of birth, weight, strain) are what an export's ``Subject``
    carries; DANDI needs sex and an age or a date of birth.
    """
    wanted = {
        "species": species,
        "notes": notes,
        "sex": sex,
        "age": age,
        "date_of_birth": date_of_birth.isoformat() if date_of_birth else "",
        "weight": weight,
        "strain": strain,
    }
    return _create_or_match(session, Subject, {"name": name}, wanted, f"subject {name!r}")


def get_subject(*, session: Session, name: str) -> Subject:
    subject = session.scalar(select(Subject).where(Subject.name == name))
    if subject is None:
        raise NotFound(f"no subject named {name!r}")
    return subject


def list_subjects(*, session: Session, limit: int = 100, offset: int = 0) -> tuple[list[Subject], int]:
    total = session.scalar(select(func.count(Subject.id))) or 0
    rows = session.scalars(select(Subject).order_by(Subject.name).limit(limit).offset(offset))
    return list(rows), total


def create_array(
    *,
    session: Session,
    subject: str,
    name: str,
    region: str = "IT",
    hemisphere: str = "",
    device: str = "",
    manufacturer: str = "",
    description: str = "",
) -> Array:
    """Create a chronic array on a subject, or return it when identical (device: the NWB device)."""
    owner = get_subject(session=session, name=subject)
    wanted = {
        "region": region,
        "hemisphere": hemisphere,
        "device": device,
        "manufacturer": manufacturer,
        "description": description,
    }
    return _create_or_match(  # type: ignore[no-any-return]
        session, Array, {"subject_id": owner.id, "name": name}, wanted, f"array {name!r} of {subject!r}"
    )


def list_arrays(
    *, session: Session, subject: str | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[tuple[Array, int]], int]:
    """Arrays with their site counts, optionally of one subject."""
    query = select(Array).join(Subject)
    if subject is not None:
        query = query.where(Subject.name == subject)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    n_sites = select(func.count(Site.id)).where(Site.array_id == Array.id).correlate(Array).scalar_subquery()
    rows = session.execute(
        query.add_columns(n_sites)
        .options(joinedload(Array.subject))
        .order_by(Subject.name, Array.name)
        .limit(limit)
        .offset(offset)
    )
    return [(a, int(n)) for a, n in rows], total


def _resolve_array(*, session: Session, name: str, subject: str | None) -> Array:
    query = select(Array).join(Subject).where(Array.name == name).options(joinedload(Array.subject))
    if subject is not None:
        query = query.where(Subject.name == subject)
    found = list(session.scalars(query))
    if not found:
        where = f" of subject {subject!r}" if subject else ""
        raise NotFound(f"no array named {name!r}{where}; create it first")
    if len(found) > 1:
        owners = ", ".join(sorted(a.subject.name for a in found))
        raise InvalidInput(f"array name {name!r} is used by several subjects ({owners}); give 'subject'")
    return found[0]


def register_sites(*, session: Session, sites: Sequence[dict[str, Any]]) -> tuple[list[Site], int]:
    """Create sites in bulk; returns (sites in input order, how many were new).

    Each item has ``site_id, array`` and optional ``subject, electrode, unit, meta, active``.
    All-or-nothing: any conflicting item (an existing ``site_id`` with other data, or a
    ``site_id`` twice in the request with different data) raises before anything is written.
    """
    arrays: dict[tuple[str, str | None], Array] = {}
    seen: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(sites):
        key = (item["array"], item.get("subject"))
        if key not in arrays:
            arrays[key] = _resolve_array(session=session, name=key[0], subject=key[1])
        wanted = {
            "array_id": arrays[key].id,
            "electrode": item.get("electrode", ""),
            "unit": item.get("unit", "mua"),
            "meta": dict(item.get("meta") or {}),
            "active": bool(item.get("active", True)),
            "x": item.get("x"),
            "y": item.get("y"),
            "z": item.get("z"),
            "location": item.get("location", ""),
        }
        previous = seen.get(item["site_id"])
        if previous is not None and previous != wanted:
            raise Conflict(f"item {i}: site_id {item['site_id']!r} appears twice with different data")
        seen[item["site_id"]] = wanted
    existing = (
        {s.site_id: s for s in session.scalars(select(Site).where(Site.site_id.in_(list(seen))))}
        if seen
        else {}
    )
    for site_id, wanted in seen.items():
        row = existing.get(site_id)
        if row is not None:
            diff = _differences(row, wanted)
            if diff:
                raise Conflict(
                    f"site {site_id!r} is already registered with other data ({'; '.join(diff)}); "
                    "site_id is stable across days, pick a new one for a new site"
                )
    created = 0
    for site_id, wanted in seen.items():
        if site_id not in existing:
            row = Site(site_id=site_id, **wanted)
            session.add(row)
            existing[site_id] = row
            created += 1
    session.flush()
    return [existing[item["site_id"]] for item in sites], created


def get_site(*, session: Session, site_id: str) -> Site:
    site = session.scalar(
        select(Site).where(Site.site_id == site_id).options(joinedload(Site.array).joinedload(Array.subject))
    )
    if site is None:
        raise NotFound(f"no site with site_id {site_id!r}")
    return site


def list_sites(
    *,
    session: Session,
    array: str | None = None,
    subject: str | None = None,
    active: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Site], int]:
    """Sites ordered by ``site_id``, filtered by array name, subject name and active flag."""
    query = select(Site).join(Array).join(Subject)
    if array is not None:
        query = query.where(Array.name == array)
    if subject is not None:
        query = query.where(Subject.name == subject)
    if active is not None:
        query = query.where(Site.active.is_(active))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(joinedload(Site.array).joinedload(Array.subject))
        .order_by(Site.site_id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


def create_rig(
    *,
    session: Session,
    rig_id: str,
    name: str = "",
    subject: str | None = None,
    screen: dict[str, Any] | None = None,
) -> Rig:
    """Register a rig (admin); identical re-registration returns the existing rig."""
    subject_id = get_subject(session=session, name=subject).id if subject else None
    wanted = {"name": name, "subject_id": subject_id, "screen": dict(screen or {})}
    return _create_or_match(session, Rig, {"rig_id": rig_id}, wanted, f"rig {rig_id!r}")


def get_rig(*, session: Session, rig_id: str) -> Rig:
    rig = session.scalar(select(Rig).where(Rig.rig_id == rig_id))
    if rig is None:
        raise NotFound(f"no rig with rig_id {rig_id!r}")
    return rig


def list_rigs(*, session: Session, limit: int = 100, offset: int = 0) -> tuple[list[Rig], int]:
    total = session.scalar(select(func.count(Rig.id))) or 0
    return list(session.scalars(select(Rig).order_by(Rig.rig_id).limit(limit).offset(offset))), total


def subject_names(*, session: Session, ids: set[int]) -> dict[int, str]:
    """Names of subjects by primary key, for rendering rigs without one query each."""
    if not ids:
        return {}
    return dict(session.execute(select(Subject.id, Subject.name).where(Subject.id.in_(ids))).tuples().all())
