"""The documented unit -> site rule for NWB files without a site_id column (pure, no database)."""

from __future__ import annotations

import pytest

from server.errors import InvalidUpload
from server.recordings.ingest.unitmap import InventorySite, UnitRef, map_units

SITES = [
    InventorySite("A-001", "A", "ch1", "mua"),
    InventorySite("A-002a", "A", "ch2", "u1"),  # two sorted units on one electrode
    InventorySite("A-002b", "A", "ch2", "u2"),
    InventorySite("B-001", "B", "ch1", "mua"),  # the same channel name on another array
]


def _unit(index: int, name: str = "", site_id: str = "", group: str = "A", label: str = "") -> UnitRef:
    electrode = {"id": index, "group": group, "label": label, "site_id": ""} if label or group else None
    return UnitRef(index=index, unit_id=str(index), name=name, site_id=site_id, electrode=electrode)


def test_rule_order_and_electrode_matching() -> None:
    units = [
        _unit(0, label="ch1"),  # group A + channel ch1
        _unit(1, label="ch1", group="B"),  # group decides between arrays
        _unit(2, name="u2", label="ch2"),  # several sites on ch2: the unit's name picks one
        _unit(3, site_id="A-001", label="nothing"),  # a site_id column wins over the electrode
        _unit(4, name="x", label="nothing"),  # the explicit map wins over everything
    ]
    got = map_units(units, sites=SITES, site_map={"x": "B-001"}, source="f.nwb")
    assert got == ["A-001", "B-001", "A-002b", "A-001", "B-001"]
    # an explicit map by unit id beats the unit's own site_id column
    assert map_units([units[3]], sites=SITES, site_map={"3": "B-001"}, source="f.nwb") == ["B-001"]


def test_unmapped_and_ambiguous_units_are_named() -> None:
    units = [_unit(0, name="lost", label="ch9"), _unit(1, name="u7", label="ch2")]
    with pytest.raises(InvalidUpload) as err:
        map_units(units, sites=SITES, site_map={}, source="f.nwb")
    detail = err.value.detail
    assert "1 unit(s) map to no registered site" in detail and "unit 'lost' (id 0), electrode 'ch9'" in detail
    assert "1 unit(s) match several sites" in detail and "A-002a, A-002b" in detail
    assert detail.startswith("f.nwb: ")
