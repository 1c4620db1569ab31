"""Where the API lives, for the few places that write URLs into data (the batch manifest).

One constant, so a stored manifest and the routes that serve what it points to never disagree.
"""

from __future__ import annotations

API_PREFIX = "/api/v1"


def image_url(sha256: str) -> str:
    """The image's URL relative to the server root (``GET /api/v1/images/{sha256}``)."""
    return f"{API_PREFIX}/images/{sha256}"
