"""Liveness and dependency reachability, the one endpoint that needs no token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from server.db.engine import get_engine

router = APIRouter(tags=["health"])


def _check_database(url: str) -> dict[str, Any]:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True, "backend": url.split(":", 1)[0].split("+", 1)[0]}
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, never a crash
        return {"ok": False, "error": type(exc).__name__ + ": " + str(exc).splitlines()[0][:200]}


def _check_queue(redis_url: str | None) -> dict[str, Any]:
    if not redis_url:
        return {"ok": True, "backend": "inprocess"}
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        return {"ok": True, "backend": "redis"}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "backend": "redis", "error": type(exc).__name__ + ": " + str(exc)[:200]}


@router.get("/health", summary="Database and queue reachability (no token needed)")
def health(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    db = _check_database(settings.resolved_database_url)
    queue = _check_queue(settings.redis_url)
    ok = db["ok"] and queue["ok"]
    body = {"status": "ok" if ok else "unhealthy", "database": db, "queue": queue}
    return JSONResponse(body, status_code=200 if ok else 503)
