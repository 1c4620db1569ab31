"""itloop rig client: pull the day's batch, cache verified images, report presentations.

Depends only on httpx, so it installs on a stimulus PC beside PsychoPy. See docs/rig-client.md.
"""

from rigclient.client import HashMismatch, RigClient, RigClientError
from rigclient.models import FetchResult, ImageRef, Manifest, PresentationEvent, SequenceEntry

__all__ = [
    "FetchResult",
    "HashMismatch",
    "ImageRef",
    "Manifest",
    "PresentationEvent",
    "RigClient",
    "RigClientError",
    "SequenceEntry",
]
