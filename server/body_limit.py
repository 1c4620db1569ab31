"""Bounds on request bodies, applied before anything reads them: one per kind of route.

A pure ASGI middleware, so that a body over its limit is refused before FastAPI parses it (an
image-set upload is otherwise spooled in full by the multipart parser first, a JSON body read into
memory): a declared ``Content-Length`` over the limit is answered 413 at once, without reading the
body; a body without one (chunked) is counted as it streams in and stopped with 413 as soon as it
passes the limit. Nothing is buffered here: chunks go to the app as they arrive.

Two limits, because the routes that take files and the routes that take JSON need very different
bounds: a route marked with :func:`accepts_upload` (spike files, image sets) gets
``max_upload_bytes`` (hundreds of MB, what the reverse proxy in front allows too,
``client_max_body_size``, docs/deployment.md); every other route gets ``max_json_bytes`` (a few
MB), so a client cannot make the server buffer and parse a 500 MB JSON document. GET, HEAD and
OPTIONS pass untouched (no route reads their bodies; the rig's image and batch fetches stay free of
the wrapper).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from itloop.errors import PayloadTooLarge
from itloop.settings import Settings
from server.errors import BodyTooLarge, error_response

UNREAD_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UPLOAD_MARK = "itloop_accepts_upload"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def accepts_upload(endpoint: Endpoint) -> Endpoint:
    """Mark a route's endpoint as a file upload: its body may be up to ``max_upload_bytes``.

    Put it below the router decorator (``@router.post(...)`` then ``@accepts_upload``).
    """
    setattr(endpoint, UPLOAD_MARK, True)
    return endpoint


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or not a number)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _flat_routes(routes: list[BaseRoute]) -> Iterator[tuple[str | None, BaseRoute]]:
    """(full path, route) for every route, routers included into routers too."""
    try:  # FastAPI >= 0.16x keeps included routers nested and resolves them lazily
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens routes at include time
        for route in routes:
            yield getattr(route, "path", None), route
        return
    for context in iter_route_contexts(routes):
        yield context.path, context.original_route


def upload_paths(routes: list[BaseRoute]) -> list[re.Pattern[str]]:
    """The path patterns of the routes marked with :func:`accepts_upload`."""
    return [
        compile_path(path)[0]
        for path, route in _flat_routes(routes)
        if path and getattr(getattr(route, "endpoint", None), UPLOAD_MARK, False)
    ]


class BodyLimitMiddleware:
    """413 for request bodies over their route's limit (read per request, so settings may change)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._upload_paths: list[re.Pattern[str]] | None = None

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        """The body limit of the request's route and the setting it comes from."""
        if self._upload_paths is None:
            # The routes are complete by the first request (the app is built before it serves).
            self._upload_paths = upload_paths(scope["app"].routes) if "app" in scope else []
        path = scope["path"]
        if any(p.match(path) for p in self._upload_paths):
            return self.settings.max_upload_bytes, "max_upload_bytes"
        return self.settings.max_json_bytes, "max_json_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in UNREAD_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit, name = self.limit_for(scope)
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            refusal = PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {limit} bytes for this route ({name})"
            )
            response = error_response(refusal)
            response.headers["Connection"] = "close"  # the body stays unread: do not reuse the connection
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside whatever reads the body (FastAPI's form parser, a route's
                    # request.stream()); the app's handler for HTTP exceptions answers 413 JSON.
                    raise BodyTooLarge(limit, name)
            return message

        await self.app(scope, receive_within_limit, send)
