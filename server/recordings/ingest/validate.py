"""The parsed form of an upload and the checks it must pass before anything is written.

Rules (all-or-nothing: one failure rejects the whole upload with a 422 that says what and where):

- times are finite and >= 0 (seconds on the session clock);
- **units**: onsets or spike times above ``MAX_PLAUSIBLE_S`` (1e5 s, about 28 h), or a median
  interval between consecutive onsets above ``MAX_MEDIAN_ISI_S`` (50 s), look like milliseconds;
- **span**: every spike lies within ``SPAN_MARGIN_S`` (60 s) of the presentations, i.e. in
  ``[first onset - 60 s, last onset + 60 s]``: spikes far outside belong to another clock or file;
- an event id seen twice must carry identical data (identical repeats are collapsed);
- event ids and site ids are 1 to ``MAX_EVENT_ID_CHARS`` (120) characters without control
  characters (a NUL byte, a tab, a line break): what both databases can store and compare alike;
- every site id is a registered site of the session's subject, every image hash a registered image
  (checked against the database in :mod:`server.recordings.store`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from itloop.errors import InvalidUpload
from itloop.sha256 import is_sha256

MAX_PLAUSIBLE_S = 1e5
MAX_EVENT_ID_CHARS = 120  # the width of presentations.event_id, rig_events.event_id and sites.site_id
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters (NUL, tab, line breaks, escape)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_MEDIAN_ISI_S = 50.0
SPAN_MARGIN_S = 60.0


@dataclass
class ParsedUpload:
    """Spikes and presentations as arrays, before grouping.

    ``spike_site`` indexes ``site_labels`` for each spike; ``stop_s`` is NaN where unknown.
    """

    site_labels: list[str]
    spike_site: np.ndarray  # int, shape (n_spikes,)
    spike_times: np.ndarray  # float64, shape (n_spikes,)
    event_ids: list[str]
    image_sha256: list[str]
    onset_s: np.ndarray  # float64, shape (n_presentations,)
    stop_s: np.ndarray  # float64, shape (n_presentations,)
    fixation_ok: np.ndarray  # bool, shape (n_presentations,)
    source: str = ""
    # Sites named with no spikes at all (NWB units with empty trains) are kept as empty trains.
    empty_sites: list[str] = field(default_factory=list)
    # NWB only: one label per unit until the service maps units to sites (ingest/unitmap.py),
    # the spike count of each unit, and the file's metadata (ingest/nwb_meta.py).
    units: list[Any] | None = None
    unit_counts: np.ndarray | None = None
    file_meta: dict[str, Any] | None = None

    def assign_sites(self, site_ids: list[str]) -> None:
        """Give every unit its site id (units of one site are merged by :func:`clean`)."""
        self.site_labels = list(site_ids)
        counts = self.unit_counts if self.unit_counts is not None else np.zeros(len(site_ids))
        self.empty_sites = [s for s, c in zip(site_ids, counts, strict=True) if c == 0]


@dataclass
class CleanUpload:
    """A validated upload: one sorted train per site, presentations sorted by onset."""

    site_ids: list[str]
    trains: list[np.ndarray]
    event_ids: list[str]
    image_sha256: list[str]
    onset_s: np.ndarray
    stop_s: np.ndarray
    fixation_ok: np.ndarray
    digest: str

    @property
    def n_spikes(self) -> int:
        return int(sum(len(t) for t in self.trains))


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_times(upload: ParsedUpload) -> None:
    """Finite, non-negative, plausible units, spikes within the session span."""
    src = upload.source
    on, sp = upload.onset_s, upload.spike_times
    if len(on) == 0:
        raise InvalidUpload(f"{src}: no presentations; an upload needs at least one presentation")
    bad = ~np.isfinite(on) | (on < 0)
    if bad.any():
        i = _first_bad(bad)
        raise InvalidUpload(
            f"{src}: presentation {upload.event_ids[i]!r} (row {i + 1}) has onset_s={float(on[i])!r}; "
            "onsets must be finite and >= 0 seconds"
        )
    bad = ~np.isfinite(sp) | (sp < 0)
    if bad.any():
        i = _first_bad(bad)
        raise InvalidUpload(
            f"{src}: spike row {i + 1} (site {upload.site_labels[upload.spike_site[i]]!r}) has "
            f"time_s={float(sp[i])!r}; spike times must be finite and >= 0 seconds"
        )
    if on.max() > MAX_PLAUSIBLE_S or (len(sp) and sp.max() > MAX_PLAUSIBLE_S):
        which = "onset_s" if on.max() > MAX_PLAUSIBLE_S else "time_s"
        top = max(on.max(), sp.max() if len(sp) else 0.0)
        raise InvalidUpload(
            f"{src}: {which} reaches {top:.6g}, beyond {MAX_PLAUSIBLE_S:g} s (28 h); times look like "
            "milliseconds, but must be seconds on the session clock"
        )
    if len(on) > 2:
        isi = float(np.median(np.diff(np.sort(on))))
        if isi > MAX_MEDIAN_ISI_S:
            raise InvalidUpload(
                f"{src}: median interval between presentation onsets is {isi:.6g} s (> "
                f"{MAX_MEDIAN_ISI_S:g} s); onsets look like milliseconds, but must be seconds"
            )
    if len(sp):
        lo, hi = on.min() - SPAN_MARGIN_S, on.max() + SPAN_MARGIN_S
        out = (sp < lo) | (sp > hi)
        if out.any():
            i = _first_bad(out)
            if sp.max() > 100 * max(on.max(), 1.0) and sp.max() / 1000.0 <= hi:
                raise InvalidUpload(
                    f"{src}: spike times reach {sp.max():.6g} s while the last onset is {on.max():.6g} s; "
                    "spike times look like milliseconds, but must be seconds on the session clock"
                )
            raise InvalidUpload(
                f"{src}: {int(out.sum())} spike(s) lie outside the session span [{lo:.6g}, {hi:.6g}] s "
                f"(first onset - {SPAN_MARGIN_S:g} s, last onset + {SPAN_MARGIN_S:g} s), e.g. spike row "
                f"{i + 1} of site {upload.site_labels[upload.spike_site[i]]!r} at {sp[i]:.6g} s; "
                "are spikes and presentations on the same clock and in seconds?"
            )


def dedupe_presentations(upload: ParsedUpload) -> ParsedUpload:
    """Collapse identical repeats of an event id; a conflicting repeat is an error."""
    ids = upload.event_ids
    if len(set(ids)) == len(ids):
        return upload
    first: dict[str, int] = {}
    keep: list[int] = []
    for i, eid in enumerate(ids):
        j = first.get(eid)
        if j is None:
            first[eid] = i
            keep.append(i)
            continue
        same = (
            upload.image_sha256[i] == upload.image_sha256[j]
            and upload.onset_s[i] == upload.onset_s[j]
            and bool(upload.fixation_ok[i]) == bool(upload.fixation_ok[j])
        )
        if not same:
            raise InvalidUpload(
                f"{upload.source}: event_id {eid!r} appears at rows {j + 1} and {i + 1} with different "
                f"data (image {upload.image_sha256[j][:12]}…/{upload.image_sha256[i][:12]}…, onset "
                f"{float(upload.onset_s[j])!r}/{float(upload.onset_s[i])!r}); event ids must be unique"
            )
    idx = np.asarray(keep)
    upload.event_ids = [ids[i] for i in keep]
    upload.image_sha256 = [upload.image_sha256[i] for i in keep]
    upload.onset_s = upload.onset_s[idx]
    upload.stop_s = upload.stop_s[idx]
    upload.fixation_ok = upload.fixation_ok[idx]
    return upload


def _shown(text: str) -> str:
    """A client's string for an error message: at most 60 characters, control characters escaped."""
    return repr(text[:60] + ("…" if len(text) > 60 else ""))


def check_names(upload: ParsedUpload) -> None:
    """Event and site ids fit the database columns and hold no control characters.

    Checked here, before any write, so that both backends refuse the same ids: PostgreSQL would
    refuse a NUL byte or a 121st character mid-COPY, SQLite would store either silently.
    """
    for kind, names in (("event_id", upload.event_ids), ("site_id", upload.site_labels)):
        for i, name in enumerate(names):
            if len(name) > MAX_EVENT_ID_CHARS:
                raise InvalidUpload(
                    f"{upload.source}: {kind} {_shown(name)} ({'row' if kind == 'event_id' else 'site'} "
                    f"{i + 1}) has {len(name)} characters; at most {MAX_EVENT_ID_CHARS} are allowed"
                )
            if _CONTROL.search(name):
                raise InvalidUpload(
                    f"{upload.source}: {kind} {_shown(name)} ({'row' if kind == 'event_id' else 'site'} "
                    f"{i + 1}) contains a control character (NUL, tab or line break); ids must be "
                    "printable text"
                )


def check_hashes(upload: ParsedUpload) -> None:
    bad = {h for h in set(upload.image_sha256) if not is_sha256(h)}
    if bad:
        i = next(i for i, h in enumerate(upload.image_sha256) if h in bad)
        raise InvalidUpload(
            f"{upload.source}: presentation row {i + 1} (event {_shown(upload.event_ids[i])}) has "
            f"image_sha256={_shown(upload.image_sha256[i])}; expected 64 lowercase hex digits"
        )


def clean(upload: ParsedUpload) -> CleanUpload:
    """Validate and canonicalise: sorted trains per site, presentations by onset, a content digest.

    The digest covers what the database stores (sites, spike times, event ids, images,
    onsets, fixation), not file bytes, so the same data in NWB or CSV is the same upload.
    """
    check_names(upload)
    upload = dedupe_presentations(upload)
    check_hashes(upload)
    check_times(upload)
    for i, label in enumerate(upload.site_labels):
        if not label:
            raise InvalidUpload(f"{upload.source}: site {i + 1} has an empty site_id")
    # Group spikes by site: one stable sort of the site index, then split.
    # Small integer keys sort by radix in numpy: O(n) instead of O(n log n).
    key = upload.spike_site.astype(np.int16) if len(upload.site_labels) < 2**15 else upload.spike_site
    order = np.argsort(key, kind="stable")
    site_sorted = key[order]
    times_sorted = upload.spike_times[order]
    n_labels = len(upload.site_labels)
    bounds = np.searchsorted(site_sorted, np.arange(n_labels + 1, dtype=site_sorted.dtype))
    by_label: dict[str, list[np.ndarray]] = {}
    for k, label in enumerate(upload.site_labels):
        by_label.setdefault(label, []).append(times_sorted[bounds[k] : bounds[k + 1]])
    for label in upload.empty_sites:
        by_label.setdefault(label, [])
    site_ids = sorted(by_label)
    trains = []
    for s in site_ids:
        parts = by_label[s]
        t = np.concatenate(parts) if parts else np.empty(0, np.float64)
        trains.append(np.sort(t).astype("<f8", copy=False))
    p_order = np.lexsort((np.asarray(upload.event_ids, dtype=str), upload.onset_s))
    event_ids = [upload.event_ids[i] for i in p_order]
    images = [upload.image_sha256[i] for i in p_order]
    onset = np.ascontiguousarray(upload.onset_s[p_order], dtype="<f8")
    stop = np.ascontiguousarray(upload.stop_s[p_order], dtype="<f8")
    fix = np.ascontiguousarray(upload.fixation_ok[p_order], dtype=bool)

    h = hashlib.sha256()
    for s, t in zip(site_ids, trains, strict=True):
        h.update(f"site\0{s}\0{len(t)}\0".encode())
        h.update(t.tobytes())
    h.update("\0".join(event_ids).encode() + b"\1")
    h.update("".join(images).encode())
    h.update(onset.tobytes())
    h.update(fix.tobytes())
    return CleanUpload(site_ids, trains, event_ids, images, onset, stop, fix, h.hexdigest())
