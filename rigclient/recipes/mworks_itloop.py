"""itloop with MWorks: fetch and verify before the session, post the events after (plain HTTP via rigclient).

MWorks runs the presentation itself (``mworks_rsvp.mwel``); this script does the two ends::

    python mworks_itloop.py prepare --server URL --rig rig-1 --token itl_... --cache ~/itloop
        # fetches the batch bundle, verifies every image, writes <cache>/mworks/sequence.txt
        # (one image path per line, in presentation order) and on_ms/off_ms for the protocol
    python mworks_itloop.py post --server URL --rig rig-1 --token itl_... --cache ~/itloop session.mwk2
        # reads the event file, takes each image's onset from the display update that first showed
        # it (MWorks stamps #stimDisplayUpdate with the flip's time), posts the events

Onsets are flip-locked (``#stimDisplayUpdate`` carries the time of the frame that showed the
image, in microseconds on the MWorks clock); the protocol also raises a digital line on that
frame for the recorder (``itloop_sync``), so ``itloop align`` can put the events on the recorder's
clock. Not run in itloop's tests (no MWorks there); the HTTP side is rigclient, which is.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rigclient import EventPoster, PresentationEvent, RigClient

log = logging.getLogger("mworks-itloop")


def prepare(client: RigClient, cache: Path) -> None:
    manifest = client.fetch_bundle()  # verifies every image's SHA-256
    if manifest is None:
        raise SystemExit("no batch published for this rig yet")
    out = cache / "mworks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sequence.txt").write_text(
        "".join(f"{client.image_path(s.image_sha256)}\n" for s in manifest.sequence)
    )
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    first = manifest.sequence[0]
    log.info(
        "batch %s: %d presentations, on %d ms / off %d ms; display %s",
        manifest.batch_id,
        len(manifest.sequence),
        first.on_ms,
        first.off_ms,
        manifest.extra.get("display"),
    )


def onsets_from_mwk2(path: Path, image_paths: list[str]) -> list[float | None]:
    """Per presentation: seconds (MWorks clock) of the first display update showing its image."""
    from mworks.data import MWKFile  # ships with MWorks

    found: list[float | None] = [None] * len(image_paths)
    k = 0
    with MWKFile(str(path)) as f:
        for evt in f.get_events_iter(codes=["#stimDisplayUpdate"]):
            shown = {s.get("filename") for s in (evt.data or []) if isinstance(s, dict)}
            if k < len(image_paths) and image_paths[k] in shown:
                found[k] = evt.time / 1e6
                k += 1
    return found


def post(client: RigClient, cache: Path, mwk2: Path) -> None:
    from rigclient import Manifest

    manifest = Manifest.from_dict(json.loads((cache / "mworks" / "manifest.json").read_text()))
    paths = [str(client.image_path(s.image_sha256)) for s in manifest.sequence]
    onsets = onsets_from_mwk2(mwk2, paths)
    t0 = min(t for t in onsets if t is not None)
    with EventPoster(
        client, manifest.batch_id, spool=cache / "events" / f"{manifest.batch_id}.ndjson"
    ) as poster:
        for s, t in zip(manifest.sequence, onsets, strict=True):
            if t is not None:
                poster.add(PresentationEvent(f"{manifest.batch_id}:{s.seq}", s.seq, s.image_sha256, t - t0))
    if all(t is not None for t in onsets) and poster.pending == 0 and not poster.rejected:
        client.complete(manifest.batch_id)


def main() -> None:
    ap = argparse.ArgumentParser(description="itloop <-> MWorks")
    ap.add_argument("action", choices=["prepare", "post"])
    ap.add_argument("mwk2", nargs="?", type=Path)
    ap.add_argument("--server", required=True)
    ap.add_argument("--rig", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--cache", type=Path, default=Path("itloop-cache"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with RigClient(args.server, args.token, args.cache, args.rig) as client:
        if args.action == "prepare":
            prepare(client, args.cache)
        else:
            if args.mwk2 is None:
                raise SystemExit("post needs the session's .mwk2 event file")
            post(client, args.cache, args.mwk2)


if __name__ == "__main__":
    main()
