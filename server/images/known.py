"""The set of image hashes this process has seen registered.

Why: an image GET must answer 404 for a hash the database does not know, but images are
never deleted (every foreign key to them is RESTRICT and no code path removes one), so
once a hash is known to be registered it stays registered, and the rig's hot path can
skip the database. Bounded, so a long-running server's memory stays flat.
"""

from __future__ import annotations

import threading


class KnownImages:
    """A bounded set of SHA-256 hex digests of registered images."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._shas: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, sha: object) -> bool:
        return sha in self._shas

    def add(self, sha: str) -> None:
        with self._lock:
            if len(self._shas) >= self.max_entries:
                self._shas.clear()  # ~13 MB at the bound; forgetting only costs a query per hash
            self._shas.add(sha)

    def __len__(self) -> int:
        return len(self._shas)
