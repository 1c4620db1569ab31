"""Liveness and dependency reachability, the one endpoint that needs no token.

It says states, never reasons: no exception text, host names or URLs, because anyone can
read it. The server log has the details of a failure.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from server.db.engine import get_engine, session_scope

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def _check_database(url: str) -> dict[str, Any]:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True, "backend": _backend(url)}
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, never a crash
        log.warning("health: database unreachable: %s", exc)
        return {"ok": False, "backend": _backend(url), "state": "unreachable"}


def _check_schema(url: str) -> str:
    """``current``, ``behind``, ``missing`` or ``unknown`` (see :func:`server.db.migrate.schema_state`)."""
    from server.db.migrate import schema_state

    try:
        return schema_state(url)
    except Exception as exc:  # noqa: BLE001 - reachable a moment ago; say so without a crash
        log.warning("health: could not read the schema revision: %s", exc)
        return "unknown"


def _check_queue(redis_url: str | None) -> dict[str, Any]:
    if not redis_url:
        return {"ok": True, "backend": "inprocess"}
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
        return {"ok": True, "backend": "redis"}
    except Exception as exc:  # noqa: BLE001
        log.warning("health: Redis unreachable: %s", exc)
        return {"ok": False, "backend": "redis", "state": "unreachable"}


def _check_workers(url: str) -> dict[str, Any]:
    """Worker processes that recorded a liveness beat (in the database) recently, by queue.

    From the database, so it holds while Redis is down: exactly when one wants to know
    whether the workers survived.
    """
    from server.jobs import service
    from worker.config import get_worker_config

    window_s = get_worker_config().stale_after_s
    try:
        with session_scope(url) as session:
            alive = service.alive_workers(session, window_s)
    except Exception as exc:  # noqa: BLE001
        log.warning("health: could not read worker liveness: %s", exc)
        return {"alive": None, "seen_within_s": window_s}
    per_queue: Counter[str] = Counter(q for w in alive for q in w.queues.split(",") if q)
    return {
        "alive": len(alive),
        "by_kind": dict(sorted(Counter(w.kind for w in alive).items())),
        "by_queue": dict(sorted(per_queue.items())),
        "seen_within_s": window_s,
    }


@router.get(
    "/health",
    summary="Database and queue reachability, and live workers (no token needed)",
    description="`status` is `ok` (200) when the database and the queue backend answer, else "
    "`unhealthy` (503). `schema` is `current` when the database is at this code's migration head, "
    "`behind` (run `itloop db upgrade`), `missing` (never upgraded) or `unknown` (migrated by a newer "
    "release); anything but `current` is 503 too, since routes would fail on missing tables or "
    "columns. `workers` counts worker processes (and an embedded server) that recorded "
    "a liveness beat within `seen_within_s`; it is read from the database, so it still answers "
    "while Redis is down, and it does not change `status`.",
)
def health(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    url = settings.resolved_database_url
    db = _check_database(url)
    queue = _check_queue(settings.redis_url)
    schema = _check_schema(url) if db["ok"] else None
    workers = _check_workers(url) if schema == "current" else {"alive": None}
    ok = db["ok"] and queue["ok"] and schema == "current"
    body = {
        "status": "ok" if ok else "unhealthy",
        "schema": schema,
        "database": db,
        "queue": queue,
        "workers": workers,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
