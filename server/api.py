"""All routers composed in one place. Everything but health is behind a token by default."""

from __future__ import annotations

import importlib
import logging

from fastapi import APIRouter, Depends

from server import health
from server.auth import views as auth_views
from server.deps import get_current_user

log = logging.getLogger(__name__)

# Domain routers, added as they land. Each module exposes ``router``.
DOMAIN_ROUTERS = [
    "server.auth.views",
    "server.lab.views",
    "server.images.views",
    "server.batches.views",
    "server.recordings.views",
    "server.modeling.views",
    "server.jobs.views",
    "server.analysis.views",
]


def build_api_router() -> APIRouter:
    api = APIRouter(prefix="/api/v1")
    api.include_router(health.router)
    authed = APIRouter(dependencies=[Depends(get_current_user)])
    for name in DOMAIN_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        authed.include_router(module.router)
    api.include_router(authed)
    return api


__all__ = ["auth_views", "build_api_router"]
