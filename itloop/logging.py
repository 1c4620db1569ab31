"""Logging setup shared by every process, with bearer tokens scrubbed from every record."""

from __future__ import annotations

import logging
import re

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


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactTokens) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactTokens())
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactAccessLog) for f in logger.filters):
            logger.addFilter(RedactAccessLog())
    # Chatty libraries: their INFO lines are per-request or per-plugin noise.
    for name in ("httpx", "alembic.runtime.plugins", "alembic.runtime.migration", "multipart"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
