"""The lab dashboard: server-rendered HTML shells whose JavaScript reads the public JSON API.

The pages carry no data and need no token: every number on them comes from
``/api/v1`` through ``fetch`` with the bearer token the user pasted on the login
page (kept in ``sessionStorage`` and handed to the dashboard's other open tabs over a
``BroadcastChannel``; see docs/dashboard.md). So the dashboard can show nothing that the
token's role may not read through the API, and there is no second, private path
into the database to keep in step with the API.

Plotly is served from the installed ``plotly`` package rather than copied into
the repository, so no network is needed at run time and the repository does not
carry 4 MB of minified JavaScript. That bundle is 4.85 MB raw and about a third
of that gzipped, so it is compressed once, in memory, and sent gzipped to every
browser that accepts it; the dashboard's own static files go through Starlette's
``GZipMiddleware`` (wrapped around that mount only, so API responses are untouched).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.gzip import GZipMiddleware

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PREFIX = "/dashboard"
API = "/api/v1"

# (path under /dashboard, template, title shown in the navigation bar)
PAGES: list[tuple[str, str, str]] = [
    ("/", "overview.html", "Overview"),
    ("/sensitivity", "sensitivity.html", "Sensitivity"),
    ("/models", "models.html", "Models"),
    ("/images", "images.html", "Images"),
    ("/days", "days.html", "Day over day"),
]

templates = Jinja2Templates(directory=str(HERE / "templates"))


@lru_cache(maxsize=1)
def plotly_js_path() -> Path | None:
    """Where the installed plotly package keeps its minified bundle (None if plotly is absent)."""
    try:
        import plotly
    except ModuleNotFoundError:
        return None
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def plotly_js_bytes() -> tuple[bytes, bytes, str]:
    """The bundle, its gzip (level 6, made once per process: under a second) and a strong ETag."""
    path = plotly_js_path()
    if path is None:
        raise FileNotFoundError("plotly.min.js")
    raw = path.read_bytes()
    return raw, gzip.compress(raw, compresslevel=6, mtime=0), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def accepts_gzip(request: Request) -> bool:
    """True when Accept-Encoding lists gzip (or ``*``) without ``q=0``."""
    for part in request.headers.get("accept-encoding", "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        params = params.strip().replace(" ", "")
        if params.startswith("q="):
            try:
                return float(params[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _context(request: Request, page: str, title: str, **extra: Any) -> dict[str, Any]:
    return {
        "request": request,
        "page": page,
        "title": title,
        "pages": [(PREFIX + p if p != "/" else PREFIX + "/", t) for p, _, t in PAGES],
        "prefix": PREFIX,
        "api": API,
        **extra,
    }


def _page_route(router: APIRouter, path: str, template: str, title: str) -> None:
    def render(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, template, _context(request, path, title))

    render.__name__ = f"dashboard_{template.removesuffix('.html')}"
    router.add_api_route(path, render, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)


def build_router() -> APIRouter:
    """Page routes: HTML shells only (no data, so no token needed to load them)."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    @router.get("", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", _context(request, "/login", "Log in"))

    @router.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js(request: Request) -> Response:
        if plotly_js_path() is None:
            raise HTTPException(404, "plotly is not installed on the server; `pip install plotly`")
        raw, packed, etag = plotly_js_bytes()
        headers = {"Cache-Control": "public, max-age=86400", "ETag": etag, "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if accepts_gzip(request):
            headers["Content-Encoding"] = "gzip"
            return Response(packed, media_type="text/javascript", headers=headers)
        return Response(raw, media_type="text/javascript", headers=headers)

    for path, template, title in PAGES:
        _page_route(router, path, template, title)
    return router


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard pages and their static files to ``app`` (called by ``create_app``)."""
    app.include_router(build_router())
    static = GZipMiddleware(StaticFiles(directory=str(HERE / "static")), minimum_size=500)
    app.mount(PREFIX + "/static", static, name="dashboard-static")
    if plotly_js_path() is None:
        log.warning("plotly is not installed: dashboard plots will show an error")
