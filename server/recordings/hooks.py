"""Extension point: callbacks run when a session is marked complete (the worker registers its night trigger).

Callbacks run inside the request's transaction, after the state change is flushed; an
exception aborts the completion, so a callback should only enqueue work, not do it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SessionCompleteCallback = Callable[[Any, Any], None]
_on_complete: list[SessionCompleteCallback] = []


def register_on_session_complete(callback: SessionCompleteCallback) -> SessionCompleteCallback:
    """Register ``callback(session, recording)``; usable as a decorator; registering twice is a no-op."""
    if callback not in _on_complete:
        _on_complete.append(callback)
    return callback


def unregister_on_session_complete(callback: SessionCompleteCallback) -> None:
    if callback in _on_complete:
        _on_complete.remove(callback)


def on_session_complete(session: Any, recording: Any) -> None:
    """Run every registered callback with the DB session and the RecordingSession row."""
    for callback in list(_on_complete):
        log.info(
            "session %s complete: running %s", recording.session_id, getattr(callback, "__name__", callback)
        )
        callback(session, recording)
