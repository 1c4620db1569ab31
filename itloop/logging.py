"""Logging setup shared by every process, with bearer tokens scrubbed from every record.

Two modes. Services (``itloop serve``, ``itloop worker``, a bare ``uvicorn --factory``) log at
``ITLOOP_LOG_LEVEL``: their log is their output. Interactive commands (``itloop night``, ``itloop
demo``...) are quiet by default: warnings and errors from everything, plus INFO summary lines
from itloop's own progress loggers (:data:`PROGRESS_LOGGERS`); ``-v`` shows every INFO line and
tracebacks, ``-vv`` DEBUG. Either way records go through :class:`ProgressAwareHandler`, which
writes with ``tqdm.write`` so that a log line never lands inside a progress bar.
"""

from __future__ import annotations

import logging
import re
import sys

_TOKEN_RE = re.compile(r"(Bearer\s+|itl_)[A-Za-z0-9_\-\.]{6,}")
# A secret in a URL's query (``?token=...``): the server never accepts tokens there, but a client
# that sends one gets its request line written by uvicorn's access log all the same.
_QUERY_SECRET_RE = re.compile(
    r"([?&;](?:token|access_token|api_key|apikey|key|password|secret)=)[^&;\s\"]*", re.IGNORECASE
)
ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``itl_`` tokens and query-string secrets replaced by ``***``."""
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + "***", text)
    return _TOKEN_RE.sub(lambda m: m.group(1) + "***", text)


class RedactTokens(logging.Filter):
    """Tokens must never reach a log file, whatever a library decides to print."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "itl_" in message or "Bearer" in message or "=" in message:
            redacted = redact(message)
            if redacted == message:
                return True
            record.msg = redacted
            record.args = None
        return True


class RedactAccessLog(logging.Filter):
    """Redacts inside uvicorn's access-log arguments, keeping them a tuple.

    uvicorn's access formatter unpacks ``record.args`` (client, method, path, version, status),
    so unlike :class:`RedactTokens` this filter must not flatten the record into its message.
    Installed on the loggers themselves, so it applies whichever handlers uvicorn configures.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers whose INFO lines are the summary a person running an interactive command wants
# (a night started, finished, failed; where the demo wrote its report).
PROGRESS_LOGGERS = ("itloop", "worker.night", "demo.run")
# Chatty libraries: their INFO lines are per-request or per-plugin noise.
QUIET_LIBRARIES = ("httpx", "alembic.runtime.plugins", "alembic.runtime.migration", "multipart")


class ProgressAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes through ``tqdm.write``.

    ``tqdm.write`` takes tqdm's lock, clears every bar drawn on the same terminal, writes the
    line and redraws the bars below it; without it a record emitted while a bar is drawn (from
    the night's worker thread, say) is appended to the bar's line. With no bar on screen it is a
    plain write.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never take the process down
            self.handleError(record)


class ConsoleFormatter(logging.Formatter):
    """The log format, with an exception shortened to its last line unless tracebacks are wanted.

    A job that fails on a user's mistake (a missing file) logs its exception; in a quiet console
    that is one readable line, and ``-v`` brings the traceback back.
    """

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__(LOG_FORMAT)
        self.tracebacks = tracebacks

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]  # noqa: N802 - logging's name
        if self.tracebacks:
            return super().formatException(ei)
        exc = ei[1]
        return f"  {type(exc).__name__}: {exc} (run with -v for the traceback)"

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return super().formatStack(stack_info) if self.tracebacks else ""


# Set by configure_console: an interactive command decided the levels; later calls from code it
# runs in-process (create_app in the demo's server thread) must not turn the chatter back on.
_console_verbosity: int | None = None


def _ensure_handler(*, tracebacks: bool) -> logging.Handler:
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, ProgressAwareHandler):
            h.setFormatter(ConsoleFormatter(tracebacks=tracebacks))
            return h
    handler = ProgressAwareHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter(tracebacks=tracebacks))
    handler.addFilter(RedactTokens())
    root.addHandler(handler)
    return handler


def configure_console(verbosity: int = 0) -> None:
    """Levels for an interactive command: 0 quiet (see the module docstring), 1 INFO, 2+ DEBUG."""
    global _console_verbosity
    _console_verbosity = verbosity
    _ensure_handler(tracebacks=verbosity > 0)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING)
    for name in PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbosity <= 1 else logging.NOTSET)
    _install_access_filters()
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def configure_service_logging(level: str) -> None:
    """Levels for a long-running service (``serve``, ``worker``): ``level`` everywhere, tracebacks on.

    Overrides a quiet console: the service's log is its output. ``-vv`` still means DEBUG.
    """
    global _console_verbosity
    if _console_verbosity is not None and _console_verbosity >= 2:
        level = "DEBUG"
    _console_verbosity = None
    for name in PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    configure_logging(level)


def _install_access_filters() -> None:
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactAccessLog) for f in logger.filters):
            logger.addFilter(RedactAccessLog())


def configure_logging(level: str = "INFO") -> None:
    """Service logging at ``level``; a no-op on levels when an interactive command set them."""
    if _console_verbosity is not None:
        _ensure_handler(tracebacks=_console_verbosity > 0)
        _install_access_filters()
        return
    _ensure_handler(tracebacks=True)
    root = logging.getLogger()
    root.setLevel(level.upper())
    _install_access_filters()
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
