"""itloop rig client: pull the day's batch, cache verified images, report presentations.

Depends only on httpx, so it installs on a stimulus PC beside PsychoPy, as its own small
distribution (``rigclient/pyproject.toml``). See docs/rig-client.md.
"""

from rigclient.client import HashMismatch, RigClient, RigClientError
from rigclient.models import FetchResult, ImageRef, Manifest, PresentationEvent, SequenceEntry
from rigclient.poster import EventPoster
from rigclient.timing import frames

__version__ = "0.2.0"

__all__ = [
    "EventPoster",
    "FetchResult",
    "HashMismatch",
    "ImageRef",
    "Manifest",
    "PresentationEvent",
    "RigClient",
    "RigClientError",
    "SequenceEntry",
    "frames",
]
