"""SHA-256 hex digests, the identity of every image and checkpoint: one definition of what one is.

Images are content-addressed by the SHA-256 of their PNG bytes; a digest is 64 lower-case hex
characters. :func:`is_sha256` checks a string, :data:`Sha256` is the same rule as a pydantic
type for request and response models, and :func:`sha256_hex` computes one.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import StringConstraints

PATTERN = r"^[0-9a-f]{64}$"
_HEX = frozenset("0123456789abcdef")

Sha256 = Annotated[str, StringConstraints(pattern=PATTERN)]


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a SHA-256 hex digest as this project writes them (64 lower-case hex)."""
    return len(value) == 64 and set(value) <= _HEX


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
