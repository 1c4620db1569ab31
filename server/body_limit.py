"""One bound on request bodies (``max_upload_bytes``), applied before anything reads them.

A pure ASGI middleware, so that a body over the limit is refused before FastAPI parses it (an
image-set upload is otherwise spooled in full by the multipart parser first, a JSON body read into
memory): a declared ``Content-Length`` over the limit is answered 413 at once, without reading the
body; a body without one (chunked) is counted as it streams in and stopped with 413 as soon as it
passes the limit. Nothing is buffered here: chunks go to the app as they arrive.

Every route that reads a body gets the same bound, which is what the reverse proxy in front
applies too (``client_max_body_size``, docs/deployment.md); uploads are the bodies it is for.
GET, HEAD and OPTIONS pass untouched (no route reads their bodies; the rig's image and batch
fetches stay free of the wrapper).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from itloop.settings import Settings
from server.errors import BodyTooLarge, PayloadTooLarge, error_response

UNREAD_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or not a number)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimitMiddleware:
    """413 for request bodies over ``settings.max_upload_bytes`` (read per request, so it may change)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in UNREAD_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            refusal = PayloadTooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes")
            await error_response(refusal)(scope, receive, send)
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
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_within_limit, send)
