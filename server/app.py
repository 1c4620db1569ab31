"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from itloop.logging import configure_logging
from itloop.settings import Settings, describe_settings_error, get_settings
from server.api import include_api
from server.auth.cache import AuthCache
from server.auth.gate import AuthGateMiddleware, lookup_in_database
from server.auth.guard import FailedAuthLimiter, LastUsed
from server.body_limit import BodyLimitMiddleware
from server.errors import install_error_handlers
from server.images.known import KnownImages
from server.openapi import install_openapi
from server.security import install_security
from server.uploads import sweep_stale_uploads

_gc_frozen = False

#: How long the server keeps an idle HTTP connection open (uvicorn's ``timeout_keep_alive``).
#: Why not uvicorn's 5 s: httpx clients (the rig client, the demo) also drop idle pooled
#: connections after 5 s, so with equal timeouts a request sent on a connection the server is
#: closing at that moment fails with "Server disconnected without sending a response". A server
#: that keeps connections longer than its clients means the client always closes first. 75 s
#: also outlasts the 60 s idle timeout common in load balancers in front of the API.
KEEP_ALIVE_S = 75


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Routes, ORM mappers and pydantic models built at startup live as long as the process.
    # Freezing them out of the collector keeps its full passes short (they can show up as
    # tens-of-milliseconds stalls in the rig API's tail). Once per process: a process that
    # builds many apps (tests, the demo) must not pin each one's objects.
    global _gc_frozen
    # Upload folders of server processes killed mid-upload (kill -9, out of memory) would stay forever.
    sweep_stale_uploads()
    if not _gc_frozen:
        _gc_frozen = True
        gc.collect()
        gc.freeze()
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app bound to ``settings`` (tests pass their own; processes use the environment)."""
    if settings is None:
        try:
            settings = get_settings()
        except ValidationError as exc:
            # `uvicorn server.app:create_app --factory` started without the CLI: same clear refusal.
            raise SystemExit(f"error: {describe_settings_error(exc)}") from None
    configure_logging(settings.log_level)
    app = FastAPI(
        title="itloop",
        version="0.1.0",
        description="Closed-loop lab server: rig batches, spike ingest, site models, "
        "adversarial sensitivity of IT sites. Every endpoint but /api/v1/health needs "
        "`Authorization: Bearer <token>`.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served by server.security from local assets, not a CDN
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.auth_cache = AuthCache(settings.auth_cache_seconds)
    # How the auth gate (tokens checked before bodies are read) finds a token's principal.
    app.state.principal_lookup = lookup_in_database(settings.resolved_database_url)
    app.state.auth_failures = FailedAuthLimiter(settings.auth_failures_per_minute)
    app.state.last_used = LastUsed()
    app.state.known_images = KnownImages()
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(AuthGateMiddleware)  # runs before the body limit: no token, no body read
    install_security(app)  # added last: outermost, so its headers reach every response (401s too)
    include_api(app)
    home = "/api/v1/docs"
    try:
        from server.dashboard.views import mount_dashboard
    except ModuleNotFoundError:
        pass
    else:
        mount_dashboard(app)
        home = "/dashboard/"

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        # A person who types the server's address lands on the dashboard (which asks for a token).
        return RedirectResponse(home, status_code=307)

    return app
