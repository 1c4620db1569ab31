"""itloop RSVP for PsychoPy: flip-locked onsets, timing in frames, sync on flip, events posted in background.

Run on the stimulus PC (PsychoPy >= 2023 with ``pip install itloop-rigclient``)::

    python psychopy_rsvp.py --server http://itloop.lab:8000 --rig rig-1 --token itl_... --cache C:/itloop

What this recipe gets right, and why (docs/rig-client.md):

- **Onsets are flip-locked**: the onset is the time ``win.flip()`` returns for the flip that first
  shows the image (``win.lastFrameT`` only updates with ``recordFrameIntervals=True``).
- **Timing in frames**: an image is up for ``frames(on_ms, refresh)`` flips, never ``core.wait``.
- **Sync on the flip**: ``win.callOnFlip`` raises the TTL line in the same flip that shows the image
  and lowers it in the flip that removes it; a photodiode patch in a corner does the same on the
  screen. The recorder's pulses then give the presentations on its clock (``itloop align`` or a sync
  upload, docs/clock-alignment.md).
- **Fixation on top**: the fixation mark is drawn after the image, so the image never hides it.
- **The loop never waits for the network**: events go to ``EventPoster.add``; a background thread
  spools them to disk and posts them, retrying through outages; at the end the poster is flushed.
- **Escape** ends the run: what was shown is posted, the batch is not marked complete.
- httpx is kept at WARNING: at INFO it logs every request.
- Before the session: the bundle is fetched and every image verified against its SHA-256; the
  screen is checked against the manifest's ``display`` (size, refresh rate), and ``--screen-check``
  reads the calibration pattern back from the frame buffer and compares it pixel by pixel.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from psychopy import core, event, visual

from rigclient import EventPoster, PresentationEvent, RigClient, frames

log = logging.getLogger("rsvp")


class SyncLine:
    """The TTL line to the recorder. Replace ``_write`` with your hardware (parallel port, LabJack, NI).

    e.g. ``from psychopy import parallel; port = parallel.ParallelPort(0x0378)`` and
    ``port.setData(255 if level else 0)``. Called from ``win.callOnFlip``, i.e. right after the flip.
    """

    def __init__(self) -> None:
        self.level = False

    def _write(self, level: bool) -> None:  # hardware goes here
        pass

    def high(self) -> None:
        self.level = True
        self._write(True)

    def low(self) -> None:
        self.level = False
        self._write(False)


def fixation_ok_for(seq: int) -> bool:
    """Whether the eye stayed in the fixation window during presentation ``seq``: ask your eye tracker."""
    return True


def check_display(win: visual.Window, display: dict, refresh_hz: float) -> None:
    """Refuse to run on a screen other than the one the batch was made for."""
    want_px = display.get("screen_px")
    if want_px and list(win.size) != list(want_px):
        raise SystemExit(f"window is {list(win.size)} px, the batch expects {want_px}: fix the display mode")
    want_hz = display.get("refresh_hz")
    if want_hz and abs(refresh_hz - want_hz) > 0.5:
        raise SystemExit(f"screen refreshes at {refresh_hz:.2f} Hz, the batch expects {want_hz} Hz")


def screen_check(win: visual.Window, pattern: Path) -> int:
    """Draw the calibration pattern at native size, read the front buffer back, return the max pixel error."""
    expected = np.asarray(Image.open(pattern).convert("RGB"), dtype=np.int16)
    h, w = expected.shape[:2]
    stim = visual.ImageStim(win, image=str(pattern), units="pix", size=(w, h), interpolate=False)
    stim.draw()
    win.flip()
    shot = np.asarray(win.getMovieFrame(buffer="front").convert("RGB"), dtype=np.int16)
    win.movieFrames.clear()
    top, left = (shot.shape[0] - h) // 2, (shot.shape[1] - w) // 2
    err = int(np.abs(shot[top : top + h, left : left + w] - expected).max())
    log.info(
        "screen check: max pixel difference %d grey levels (0 = pixels reach the frame buffer unchanged)", err
    )
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--rig", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--cache", default="itloop-cache")
    ap.add_argument("--screen-check", action="store_true", help="verify the calibration pattern and exit")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # INFO would log every image request
    logging.getLogger("httpcore").setLevel(logging.WARNING)

    cache = Path(args.cache)
    client = RigClient(args.server, args.token, cache, args.rig)
    manifest = client.fetch_bundle()  # every image verified against its SHA-256 before use
    if manifest is None:
        raise SystemExit("no batch published for this rig yet")
    display = manifest.extra.get("display") or {}

    # gamma=1: a linear (identity) lookup table, so pixel values reach the screen as served.
    win = visual.Window(fullscr=True, units="pix", color=(128, 128, 128), colorSpace="rgb255", gamma=1.0)
    win.mouseVisible = False
    refresh_hz = win.getActualFrameRate(nIdentical=60, nMaxFrames=240) or display.get("refresh_hz") or 60.0
    check_display(win, display, refresh_hz)
    if args.screen_check:
        pattern = client.calibration_path(manifest)
        if pattern is None:
            raise SystemExit(
                "this batch's manifest has no calibration pattern (published before screen checks)"
            )
        err = screen_check(win, pattern)
        win.close()
        raise SystemExit(0 if err == 0 else 1)

    paths = {img.sha256: client.image_path(img.sha256) for img in manifest.images}
    stims = {
        sha: visual.ImageStim(win, image=str(p), units="pix", size=None, interpolate=False)
        for sha, p in paths.items()
    }
    fixation = visual.ShapeStim(
        win, vertices="cross", size=12, lineWidth=0, fillColor=(255, 0, 0), colorSpace="rgb255"
    )
    patch = visual.Rect(win, width=40, height=40, pos=(win.size[0] / 2 - 20, -win.size[1] / 2 + 20))
    sync = SyncLine()

    poster = EventPoster(client, manifest.batch_id, spool=cache / "events" / f"{manifest.batch_id}.ndjson")
    resumed = poster.resume()  # after a crash: re-post what the spool holds (idempotent)
    if resumed:
        log.info("re-posting %d event(s) from an earlier run", resumed)
    poster.start()

    t0 = core.getTime()  # the session clock: onset_s is seconds since here
    aborted = False
    trial = None
    for item in manifest.sequence:  # already in presentation order (by seq)
        if item.trial != trial:  # a new trial: fixation alone (replace with your fixation acquisition)
            trial = item.trial
            for _ in range(frames(300, refresh_hz)):
                fixation.draw()
                win.flip()
        n_on, n_off = frames(item.on_ms, refresh_hz), frames(item.off_ms, refresh_hz)
        stim = stims[item.image_sha256]
        onset = None
        for k in range(n_on):
            stim.draw()
            fixation.draw()  # on top of the image
            patch.fillColor = (1, 1, 1)
            patch.draw()
            if k == 0:
                win.callOnFlip(sync.high)
            t = win.flip()
            if k == 0:
                onset = t - t0
        for k in range(n_off):
            fixation.draw()
            patch.fillColor = (-1, -1, -1)
            patch.draw()
            if k == 0:
                win.callOnFlip(sync.low)
            win.flip()
        poster.add(
            PresentationEvent(
                event_id=f"{manifest.batch_id}:{item.seq}",
                seq=item.seq,
                image_sha256=item.image_sha256,
                onset_s=float(onset),
                fixation_ok=fixation_ok_for(item.seq),
            )
        )
        if event.getKeys(keyList=["escape"]):
            log.warning("escape pressed: stopping after seq %d", item.seq)
            aborted = True
            break

    win.close()
    summary = poster.close(timeout_s=300)
    log.info("events: %s", summary)
    if aborted or summary["pending"] or summary["rejected"]:
        log.warning("batch %s not marked complete (aborted, unposted or refused events)", manifest.batch_id)
    else:
        client.complete(manifest.batch_id)
    client.close()
    core.quit()


if __name__ == "__main__":
    main()
