"""Post presentation events from a background thread, so the presentation loop never waits for the network.

Why: a presentation loop that posts events itself stalls whenever the server is slow, and when
the network is down it either blocks for the client's whole retry budget or raises and ends the
recording. Here the loop only calls :meth:`EventPoster.add` (a lock and a list append); a
daemon thread writes each event to a local spool file (NDJSON) and posts them in batches. While
the server cannot be reached (connection errors, 5xx) the thread keeps every unposted event and
retries with exponential backoff, indefinitely; events are dropped from memory only once the
server has acknowledged them. Posting is idempotent by ``event_id`` on the server, so re-posting
after a lost answer, or re-posting a whole spool after a crash (:meth:`EventPoster.resume`),
stores nothing twice.

A 4xx answer means the server refuses the content, which retrying cannot change: the batch is
split in halves until the refused events are isolated; those are kept in :attr:`rejected` with
the server's reason (and stay in the spool), the rest are posted.

Only the standard library and :class:`rigclient.client.RigClient` are used (httpx underneath).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rigclient.client import RigClient, RigClientError
from rigclient.models import PresentationEvent

log = logging.getLogger(__name__)


def _as_dict(event: PresentationEvent | Mapping[str, Any]) -> dict[str, Any]:
    return event.to_dict() if isinstance(event, PresentationEvent) else dict(event)


class EventPoster:
    """Buffer events and post them from a background thread; see the module docstring.

    Parameters
    ----------
    client : RigClient
        Used for the POSTs (one attempt each; this class does the retrying).
    batch_id : str
        The batch the events belong to.
    spool : Path, optional
        NDJSON file every event is appended to before it is posted (a crash loses nothing that
        reached it; :meth:`resume` re-posts it). None: memory only.
    batch_size : int
        Events per POST at most.
    interval_s : float
        How long the thread waits for more events before posting a partial batch.
    backoff_s, max_backoff_s : float
        Retry delay after a failed POST, doubling up to the maximum.
    """

    def __init__(
        self,
        client: RigClient,
        batch_id: str,
        *,
        spool: str | Path | None = None,
        batch_size: int = 200,
        interval_s: float = 1.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.client = client
        self.batch_id = batch_id
        self.spool = Path(spool) if spool is not None else None
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self.new = 0
        self.repeated = 0
        self.failures = 0
        self.last_error: str | None = None
        self._incoming: list[dict[str, Any]] = []  # added, not yet spooled
        self._pending: list[dict[str, Any]] = []  # spooled, not yet acknowledged
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ---- the presentation loop's side ------------------------------------------------------

    def add(self, event: PresentationEvent | Mapping[str, Any]) -> None:
        """Queue one event; returns at once (no I/O in the caller's thread)."""
        item = _as_dict(event)
        with self._cond:
            self._incoming.append(item)
            if len(self._incoming) >= self.batch_size:
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Events added but not yet acknowledged by the server (nor rejected by it)."""
        with self._cond:
            return len(self._incoming) + len(self._pending)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> EventPoster:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="itloop-event-poster", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> EventPoster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resume(self) -> int:
        """Queue every event of an existing spool again (after a crash); returns how many."""
        if self.spool is None or not self.spool.is_file():
            return 0
        events = [json.loads(line) for line in self.spool.read_text().splitlines() if line.strip()]
        with self._cond:
            self._pending.extend(events)
            self._cond.notify()
        return len(events)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every added event is acknowledged (or rejected); False on timeout."""
        self.start()  # nothing would ever post otherwise
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify()
            while self._incoming or self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(0.05, left))
        return True

    def close(self, timeout_s: float | None = 60.0) -> dict[str, Any]:
        """Flush (up to ``timeout_s``), stop the thread, and say what happened.

        Events still unposted at the timeout stay in the spool (post them later with
        ``RigClient.post_events``) and are counted in ``pending``.
        """
        done = self.flush(timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        summary = {
            "new": self.new,
            "repeated": self.repeated,
            "pending": self.pending,
            "rejected": len(self.rejected),
            "failures": self.failures,
        }
        if not done:
            log.warning(
                "%d event(s) of batch %s not posted (last error: %s); they are in %s",
                summary["pending"],
                self.batch_id,
                self.last_error,
                self.spool or "memory only",
            )
        return summary

    # ---- the background thread -------------------------------------------------------------

    def _spool(self, items: list[dict[str, Any]]) -> None:
        if self.spool is None or not items:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in items))

    def _post(self, chunk: list[dict[str, Any]]) -> None:
        """Post ``chunk``; on a refusal, isolate the refused events by halving. Raises on outages."""
        try:
            answer = self.client.post_events(self.batch_id, chunk, chunk_size=len(chunk), retries=0)
        except RigClientError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            if len(chunk) == 1:
                log.error("the server refused event %s: %s", chunk[0].get("event_id"), exc)
                self.rejected.append((chunk[0], str(exc)))
                return
            half = len(chunk) // 2
            self._post(chunk[:half])
            self._post(chunk[half:])
            return
        self.new += answer["new"]
        self.repeated += answer["repeated"]

    def _run(self) -> None:
        delay = self.backoff_s
        while True:
            with self._cond:
                if not self._stop and not self._pending and len(self._incoming) < self.batch_size:
                    self._cond.wait(self.interval_s)
                if self._stop:
                    return
                incoming, self._incoming = self._incoming, []
            try:
                self._spool(incoming)
            except OSError as exc:  # a full disk must not lose the events: keep them in memory
                log.error("cannot write the event spool %s: %s", self.spool, exc)
            with self._cond:
                self._pending.extend(incoming)
                chunk = list(self._pending[: self.batch_size])
            if not chunk:
                continue
            try:
                self._post(chunk)
            except RigClientError as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.warning("posting %d event(s) failed (%s); retrying in %.1f s", len(chunk), exc, delay)
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, timeout=delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            delay = self.backoff_s
            with self._cond:
                del self._pending[: len(chunk)]
                self._cond.notify_all()
