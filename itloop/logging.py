"""Logging setup shared by every process, with bearer tokens scrubbed from every record."""

from __future__ import annotations

import logging
import re

_TOKEN_RE = re.compile(r"(Bearer\s+|itl_)[A-Za-z0-9_\-\.]{6,}")


class RedactTokens(logging.Filter):
    """Tokens must never reach a log file, whatever a library decides to print."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "itl_" in message or "Bearer" in message:
            record.msg = _TOKEN_RE.sub(lambda m: m.group(1) + "***", message)
            record.args = None
        return True


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactTokens) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactTokens())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their INFO lines are per-request or per-plugin noise.
    for name in ("httpx", "alembic.runtime.plugins", "alembic.runtime.migration", "multipart"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
