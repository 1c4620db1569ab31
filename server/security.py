"""Browser-facing hardening: security headers on every response, and API docs served locally.

The headers go on every response, API and dashboard alike, from one pure ASGI middleware (no
per-route code to forget). The Content-Security-Policy allows only this origin's scripts, so the
pages carry no inline script (the dashboard reads its configuration from ``data-`` attributes, the
docs page from its own ``swagger-init.js``); inline *styles* stay allowed because Plotly injects
``<style>`` elements. Images may be ``blob:`` URLs (the dashboard fetches PNGs with the token and
shows them as blobs) or ``data:`` URLs (icons inside Swagger UI's stylesheet).

Swagger UI's JavaScript and CSS come from the installed ``fastapi-offline`` package (Swagger UI
5, which reads OpenAPI 3.1) rather than a CDN, so the docs work on a lab network without internet
and no third-party script runs with the user's token in the page. Where that package is missing
the docs page is not served (404) and a warning is logged.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)

DOCS_PATH = "/api/v1/docs"
OPENAPI_PATH = "/api/v1/openapi.json"
HERE = Path(__file__).resolve().parent / "docs_ui"
ASSET_CACHE = "public, max-age=86400"


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


@lru_cache(maxsize=1)
def swagger_assets_dir() -> Path | None:
    """Where the installed ``fastapi-offline`` keeps Swagger UI's files (None when not installed).

    Found without importing the package (its ``__init__`` builds a FastAPI subclass we do not use).
    """
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


_ASSETS = {
    "swagger-ui-bundle.js": ("vendor", "text/javascript"),
    "swagger-ui.css": ("vendor", "text/css"),
    "favicon.png": ("vendor", "image/png"),
    "swagger-init.js": ("own", "text/javascript"),
}


def _docs_page() -> str:
    assets = f"{DOCS_PATH}/assets"
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>itloop API</title>
  <link rel="icon" type="image/png" href="{assets}/favicon.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{OPENAPI_PATH}"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""


def build_docs_router() -> APIRouter:
    """``/api/v1/docs`` (Swagger UI) and its assets, all from this server."""
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_PATH, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        if swagger_assets_dir() is None:
            raise HTTPException(404, "API docs are not available: the fastapi-offline package is missing")
        return HTMLResponse(_docs_page())

    @router.get(DOCS_PATH + "/assets/{name}")
    def docs_asset(name: str) -> FileResponse:
        vendor = swagger_assets_dir()
        where = _ASSETS.get(name)
        if where is None or (where[0] == "vendor" and vendor is None):
            raise HTTPException(404, f"no docs asset {name!r}")
        folder = vendor if where[0] == "vendor" else HERE
        assert folder is not None
        return FileResponse(folder / name, media_type=where[1], headers={"Cache-Control": ASSET_CACHE})

    return router


def install_security(app: FastAPI) -> None:
    """Security headers on every response, and the locally served API docs."""
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(build_docs_router())
    if swagger_assets_dir() is None:
        log.warning("fastapi-offline is not installed: /api/v1/docs is not served (the API is unaffected)")
