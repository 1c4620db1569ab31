"""A short-lived, per-app memory of authenticated tokens.

Why: at 200 rig requests/s the token lookup (a pool checkout, a query and a commit per
request) was the largest cost of an image GET. A hit costs one HMAC and a dict lookup.
Revocation stays prompt: the process that revokes a token through the API forgets every
token at once (after the revocation commits), and every other process (another uvicorn
worker, a revocation from the CLI) stops accepting it within ``ttl_s`` seconds. Failed
lookups are never remembered, so a new token works at once. ``ttl_s = 0`` turns it off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token belongs to: an immutable snapshot, safe to share between requests."""

    id: int
    name: str
    role: str
    disabled: bool
    created_at: datetime


class AuthCache:
    """Token hash -> principal, each entry valid for ``ttl_s`` seconds, at most ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Principal | None:
        hit = self._entries.get(token_hash)
        if hit is None:
            return None
        principal, expires = hit
        if time.monotonic() >= expires:
            with self._lock:
                self._entries.pop(token_hash, None)
            return None
        return principal

    def put(self, token_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # rare (a burst of distinct tokens): start over, stay bounded
            self._entries[token_hash] = (principal, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
