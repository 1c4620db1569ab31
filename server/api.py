"""All routers composed in one place. Everything but health is behind a token by default."""

from __future__ import annotations

import importlib
import logging

from fastapi import Depends, FastAPI

from server import health
from server.auth import views as auth_views
from server.deps import get_current_user

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

# Domain routers. Each module exposes ``router``. The rig's hot routers come first: FastAPI
# matches routers in order (and each included router twice), so this order and a flat,
# one-level composition keep routing off the profile of an image GET.
DOMAIN_ROUTERS = [
    "server.images.views",
    "server.batches.views",
    "server.auth.views",
    "server.lab.views",
    "server.recordings.views",
    "server.recordings.brainscore_views",
    "server.modeling.views",
    "server.jobs.views",
    "server.analysis.views",
]


def include_api(app: FastAPI) -> None:
    """Add health (no token) and every domain router (token required) under ``/api/v1``."""
    app.include_router(health.router, prefix=PREFIX)
    for name in DOMAIN_ROUTERS:
        module = importlib.import_module(name)
        app.include_router(module.router, prefix=PREFIX, dependencies=[Depends(get_current_user)])


__all__ = ["PREFIX", "auth_views", "include_api"]
