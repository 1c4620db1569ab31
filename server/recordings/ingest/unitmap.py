"""Which registered site each NWB unit belongs to: the documented rule for NeuroConv/SpikeInterface files.

itloop's own layout names the site in a ``site_id`` column of the units table. Files written by
NeuroConv or SpikeInterface have none; their units point at rows of the electrodes table. A
unit's site is, in this order (docs/nwb-and-brainscore.md):

1. the explicit mapping given with the upload (``site_map``: unit name or unit id -> site id);
2. the units table's ``site_id`` column;
3. the ``site_id`` column of the unit's (first) electrode;
4. the registered site of the session's subject whose array is named like the electrode's group
   and whose ``electrode`` equals the electrode's label (``channel_name``, else ``label``, else the
   electrode's id as text); when several sites share that electrode, the one whose ``unit`` equals the
   unit's name.

A unit that no rule maps is an error naming the unit and its electrode: nothing is stored.
Pure (no database): the service passes the subject's sites in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import InvalidUpload


@dataclass
class UnitRef:
    """One unit of an NWB file as far as site mapping needs it."""

    index: int  # row in the units table
    unit_id: str  # the units table's id, as text
    name: str  # the unit_name column, "" when absent
    site_id: str  # the units table's site_id column, "" when absent
    electrode: dict[str, Any] | None  # the unit's first electrode row (nwb_meta.electrode_rows)

    def describe(self) -> str:
        who = f"unit {self.name!r} (id {self.unit_id})" if self.name else f"unit id {self.unit_id}"
        if self.electrode is None:
            return f"{who}, no electrode"
        e = self.electrode
        return f"{who}, electrode {e['label'] or e['id']!r} of group {e['group']!r}"


@dataclass
class InventorySite:
    site_id: str
    array: str
    electrode: str
    unit: str


def map_units(
    units: list[UnitRef], *, sites: list[InventorySite], site_map: dict[str, str], source: str
) -> list[str]:
    """The site id of every unit, by the module's rule; raises naming every unit left unmapped."""
    by_electrode: dict[tuple[str, str], list[InventorySite]] = {}
    for s in sites:
        by_electrode.setdefault((s.array, s.electrode), []).append(s)
    out: list[str] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for u in units:
        explicit = site_map.get(u.name) if u.name else None
        explicit = explicit or site_map.get(u.unit_id)
        if explicit:
            out.append(explicit)
            continue
        if u.site_id:
            out.append(u.site_id)
            continue
        e = u.electrode
        if e is not None and e.get("site_id"):
            out.append(str(e["site_id"]))
            continue
        label = (e["label"] or str(e["id"])) if e is not None else ""
        candidates = by_electrode.get((e["group"], label), []) if e is not None else []
        if len(candidates) > 1:
            named = [s for s in candidates if s.unit == u.name]
            if len(named) == 1:
                out.append(named[0].site_id)
                continue
            ambiguous.append(f"{u.describe()} -> {', '.join(s.site_id for s in candidates)}")
            out.append("")
            continue
        if len(candidates) == 1:
            out.append(candidates[0].site_id)
            continue
        missing.append(u.describe())
        out.append("")
    if missing or ambiguous:
        parts = []
        if missing:
            shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
            parts.append(
                f"{len(missing)} unit(s) map to no registered site of this session's subject ({shown})"
            )
        if ambiguous:
            parts.append(f"{len(ambiguous)} unit(s) match several sites ({'; '.join(ambiguous[:10])})")
        raise InvalidUpload(
            f"{source}: {'. '.join(parts)}. A unit's site comes from a site_id column of the units or "
            "electrodes table, or from its electrode: the site whose array is the electrode group and "
            "whose electrode is the electrode's channel_name/label; or give site_map={unit: site_id} "
            "with the upload (docs/nwb-and-brainscore.md)"
        )
    return out
