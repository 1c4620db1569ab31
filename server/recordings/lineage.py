"""The lineage of the images a session showed, one flat record per image, for every export.

One query for all images (not one per image as ``GET /images/{sha}/lineage`` does). Missing
values are typed fill values, so the same record fills NWB columns, netCDF coordinates and CSV
cells alike: ``""`` for text, NaN for floats, -1 for the seed.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from server.images.tables import Image
from server.lab.tables import Site
from server.modeling.tables import ModelVersion

#: The lineage keys of an :func:`image_lineage` record, in the order every export lists them (after
#: the image's own ``image_sha256``, ``width`` and ``height``).
LINEAGE_FIELDS = (
    "kind",
    "category",
    "source_name",
    "parent_sha256",
    "model_version",
    "perturbed_site",
    "epsilon",
    "direction",
    "seed",
    "predicted_change",
    "achieved_l2",
)


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def image_lineage(session: Session, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Image id -> sha256, size, kind, category, source name, parent, model version, perturbed site,
    epsilon, direction, seed, predicted change and achieved L2."""
    parent = aliased(Image)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start : start + 500]
        rows = session.execute(
            select(Image, parent.sha256, ModelVersion.version, Site.site_id)
            .outerjoin(parent, parent.id == Image.parent_id)
            .outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)
            .outerjoin(Site, Site.id == Image.site_pk)
            .where(Image.id.in_(chunk))
        ).all()
        for image, parent_sha, version, site_id in rows:
            out[image.id] = {
                "image_sha256": image.sha256,
                "width": int(image.width),
                "height": int(image.height),
                "kind": image.kind or "",
                "category": image.category or "",
                "source_name": image.source_name or "",
                "parent_sha256": parent_sha or "",
                "model_version": version or "",
                "perturbed_site": site_id or "",
                "epsilon": _float(image.epsilon),
                "direction": image.direction or "",
                "seed": -1 if image.seed is None else int(image.seed),
                "predicted_change": _float(image.predicted_change),
                "achieved_l2": _float(image.achieved_l2),
            }
    return out
