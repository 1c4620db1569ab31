"""What the token check does besides checking: limit and log failures, record when tokens are used.

Failed authentications (a token that is unknown, revoked or disabled) are counted per client
address in a sliding window; past ``auth_failures_per_minute`` in the last minute the client is
answered 429 (with ``Retry-After``) without a database lookup until the window has room again,
and each failure is logged (address, method and path, never the token) up to that limit, then
one line says the client is being limited. Tokens this process has already checked keep working
from the cache, so a rig behind the same address as a guessing client is not cut off mid-batch.
Counts are per API process: with ``--workers N`` a client gets at most N times the limit.

``last_used_at`` of a token is written at most once per ``LAST_USED_EVERY_S`` per process, as
the first statement of the request's own session (so SQLite takes its write lock without a
read-to-write upgrade) and committed at once; a write that fails (database busy) is skipped, it
never fails the request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from server.auth.tables import ApiToken
from server.db.base import utcnow
from server.db.engine import SQLITE_BUSY_TIMEOUT_MS

log = logging.getLogger(__name__)

WINDOW_S = 60.0
LAST_USED_EVERY_S = 60.0
MAX_TRACKED = 10_000
SQLITE_TOUCH_WAIT_MS = 200


class FailedAuthLimiter:
    """Sliding-window count of failed authentications per client address."""

    def __init__(self, max_failures: int, window_s: float = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not limited."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return None
            return max(1, math.ceil(times[0] + self.window_s - now))

    def record_failure(self, client: str, what: str) -> None:
        """Count one failure of ``client`` and log it (until the client is limited)."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= MAX_TRACKED and client not in self._failures:
                self._failures.clear()  # a flood of distinct addresses: start over, stay bounded
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            n = len(times)
        if n < self.max_failures:
            log.warning("failed authentication from %s on %s", client, what)
        elif n == self.max_failures:
            log.warning(
                "failed authentication from %s on %s: %d failures in %.0f s, refusing its token "
                "checks (429) until the window has room",
                client,
                what,
                n,
                self.window_s,
            )


class LastUsed:
    """Decides when this process writes a token's ``last_used_at`` (at most once per interval)."""

    def __init__(self, every_s: float = LAST_USED_EVERY_S) -> None:
        self.every_s = every_s
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, token_hash: str) -> bool:
        """True once per interval per token; the caller then calls :func:`touch`."""
        now = time.monotonic()
        with self._lock:
            last = self._written.get(token_hash)
            if last is not None and now - last < self.every_s:
                return False
            if len(self._written) >= MAX_TRACKED:
                self._written.clear()
            self._written[token_hash] = now
            return True


def touch(session: Session, token_hash: str, every_s: float = LAST_USED_EVERY_S) -> None:
    """Set the token's ``last_used_at`` to now (unless another process just did) and commit.

    Runs before anything else in the request's session, so the commit carries nothing else. On
    SQLite it waits at most ``SQLITE_TOUCH_WAIT_MS`` for the write lock (a long upload may hold
    it): a skipped write is retried a minute later, a request stalled behind an upload is not.
    """
    now = utcnow()
    stale = now - timedelta(seconds=every_s)
    raw: Any = None  # the DBAPI (sqlite3) connection, when on SQLite
    try:
        if session.get_bind().dialect.name == "sqlite":
            raw = session.connection().connection.driver_connection
            raw.execute(f"PRAGMA busy_timeout={SQLITE_TOUCH_WAIT_MS}")
        try:
            session.execute(
                update(ApiToken)
                .where(
                    ApiToken.token_hash == token_hash,
                    or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale),
                )
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
        finally:
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # back to the engine's default
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.info("could not record a token's last use (skipped): %s", exc.__class__.__name__)
