"""The readout's running statistics, kept per candidate with each model version's artifact.

A night refits each candidate's readout on every day so far.  With a GCV readout
(:class:`models.readout.MultiRidgeCV` ``cv="gcv"``) the fit depends on the data only through
sums that add over images (:mod:`models.readout_stats`), so the refit stores those sums beside
the version's artifact (``models/<version>.readout-state.npz``, with a small JSON of what they
were computed from) and the next night folds in only its new images, and the changed means of
images shown again, instead of refitting all days.

Each site's penalty is chosen on one image per family (the clean images; twins are near-copies
of their parents, and a criterion that leaves one out at a time would let its parent predict it
at any penalty), so a second set of sums, over those images, is kept beside the first.

The shortcut is taken only when it cannot change the result beyond rounding: the same candidate
(spec and checkpoint), sites, response window and penalties; every image of the earlier fit
still in the training set; and their features bit-identical to the ones counted (a digest of
them, in the earlier order).  Anything else (a trained candidate whose core changed, a day that
fell out of ``train_days``, a new site) is a full fit, which stores fresh statistics.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from models.readout import DEFAULT_ALPHAS, MultiRidgeCV
from models.readout_stats import RidgeStats
from server.modeling.tables import ModelVersion

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from itloop.storage import ObjectStore

log = logging.getLogger(__name__)

#: How many of a candidate's latest versions are looked at for statistics to continue from.
LOOKBACK = 8


def state_key(version: str) -> str:
    return f"models/{version}.readout-state.npz"


def meta_key(version: str) -> str:
    return f"models/{version}.readout-state.json"


def features_digest(X: np.ndarray) -> str:
    """A digest of the features' float64 bytes (row order matters)."""
    return hashlib.blake2b(np.ascontiguousarray(X, dtype=np.float64).tobytes(), digest_size=20).hexdigest()


@dataclass
class ReadoutFit:
    """A fitted readout and how it was fitted: ``"full"``, or ``"incremental"`` from ``base``."""

    readout: MultiRidgeCV
    mode: str
    base: str | None = None
    new_images: int = 0
    revised_images: int = 0


def _identity(
    spec: dict[str, Any], checkpoint_sha: str | None, site_ids: list[str], window_ms: Any
) -> dict[str, Any]:
    """What the statistics depend on besides the images (compared as JSON)."""
    return json.loads(
        json.dumps(
            {
                "candidate": spec,
                "checkpoint_sha256": checkpoint_sha,
                "site_ids": [str(s) for s in site_ids],
                "window_ms": [float(w) for w in window_ms],
                "alphas": [float(a) for a in DEFAULT_ALPHAS],
                "penalty_chosen_on": "one image per family",
            },
            sort_keys=True,
        )
    )


def save_state(
    store: ObjectStore,
    version: str,
    readout: MultiRidgeCV,
    identity: dict[str, Any],
    shas: list[str],
    X: np.ndarray,
    Y: np.ndarray,
    select: np.ndarray,
) -> None:
    """Store ``readout``'s statistics (and the responses they counted) beside ``version``'s artifact."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {**readout.stats_.to_arrays(), "responses": np.asarray(Y, dtype=np.float64)}
    if readout.select_stats_ is not None:
        arrays.update({f"select_{k}": v for k, v in readout.select_stats_.to_arrays().items()})
    np.savez(buf, **arrays)
    store.put(state_key(version), buf.getvalue())
    meta = {
        "identity": identity,
        "images": list(shas),
        "features": features_digest(X),
        "select": [bool(b) for b in select],
    }
    store.put(meta_key(version), json.dumps(meta).encode())


def _base(
    session: Session, store: ObjectStore, candidate: str, identity: dict[str, Any], shas: set[str]
) -> tuple[str, dict[str, Any]] | None:
    """The newest earlier version of ``candidate`` whose statistics this fit can continue."""
    versions = session.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.candidate == candidate)
        .order_by(ModelVersion.id.desc())
        .limit(LOOKBACK)
    ).all()
    for v in versions:
        if not store.exists(meta_key(v)) or not store.exists(state_key(v)):
            continue
        meta = json.loads(store.get(meta_key(v)))
        if meta.get("identity") == identity and set(meta["images"]) <= shas:
            return v, meta
    return None


def fit_readout(
    session: Session,
    store: ObjectStore,
    version: str,
    spec: dict[str, Any],
    checkpoint_sha: str | None,
    site_ids: list[str],
    window_ms: Any,
    shas: list[str],
    X: np.ndarray,
    Y: np.ndarray,
    select: np.ndarray,
    device: str | None = None,
) -> ReadoutFit:
    """The candidate's GCV readout on all images, its penalties chosen on ``select`` (one image
    per family, :func:`models.readout.one_per_group`): updated from an earlier night's
    statistics when they are still valid (see the module docstring), else fitted in full; its
    statistics are stored for ``version`` either way. ``device``: where the solve runs (the
    night's GPU when it has one; the statistics stay on the CPU)."""
    identity = _identity(spec, checkpoint_sha, site_ids, window_ms)
    select = np.asarray(select, dtype=bool)
    fit = None
    if len(set(shas)) == len(shas):
        found = _base(session, store, spec["name"], identity, set(shas))
        if found is not None:
            fit = _continue(store, found, shas, X, Y, select, device)
    if fit is None:
        fit = ReadoutFit(MultiRidgeCV(cv="gcv", device=device).fit(X, Y, select=select), "full")
    try:
        save_state(store, version, fit.readout, identity, shas, X, Y, select)
        prune_states(session, store, spec["name"])
    except Exception:  # the fit stands; the next night refits in full
        log.warning("could not store the readout statistics of %s", version, exc_info=True)
    return fit


def prune_states(session: Session, store: ObjectStore, candidate: str) -> int:
    """Delete the statistics of ``candidate``'s versions older than the newest ``LOOKBACK``.

    Why: they are large (p x p per candidate: about 45 MB at 2,048 features and 200 sites) and
    no later fit can continue from them (:func:`_base` looks back ``LOOKBACK`` versions), so
    keeping them would only grow the store night after night. The model artifacts stay.
    """
    old = session.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.candidate == candidate)
        .order_by(ModelVersion.id.desc())
        .offset(LOOKBACK)
    ).all()
    removed = 0
    for v in old:
        for key in (state_key(v), meta_key(v)):
            if store.exists(key):
                store.delete(key)
                removed += 1
    return removed


def _continue(
    store: ObjectStore,
    found: tuple[str, dict[str, Any]],
    shas: list[str],
    X: np.ndarray,
    Y: np.ndarray,
    select: np.ndarray,
    device: str | None,
) -> ReadoutFit | None:
    base, meta = found
    row = {h: i for i, h in enumerate(shas)}
    old = np.array([row[h] for h in meta["images"]], dtype=np.int64)
    if features_digest(X[old]) != meta["features"]:
        log.info("readout: features of %s's images changed; full fit", base)
        return None
    if meta.get("select") != [bool(b) for b in select[old]]:
        log.info("readout: the images the penalty is chosen on changed since %s; full fit", base)
        return None
    with np.load(io.BytesIO(store.get(state_key(base))), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    stats = RidgeStats.from_arrays(arrays)
    chosen = {k[len("select_") :]: v for k, v in arrays.items() if k.startswith("select_")}
    select_stats = RidgeStats.from_arrays(chosen) if chosen else None
    y_old = arrays["responses"]
    if stats.n != len(old) or y_old.shape != (len(old), Y.shape[1]):
        return None
    if select_stats is None or select_stats.n != int(select[old].sum()):
        return None  # no sums (or other ones) for the images the penalty is chosen on: refit in full
    changed = np.flatnonzero(np.any(y_old != Y[old], axis=1))
    new = np.setdiff1d(np.arange(len(shas)), old)
    readout = MultiRidgeCV.from_stats(stats, select_stats=select_stats, device=device)
    revised = (X[old[changed]], y_old[changed], Y[old[changed]]) if changed.size else None
    readout.update(X[new], Y[new], revised=revised, select=select[new], revised_select=select[old[changed]])
    log.info(
        "readout: updated %s's statistics with %d new images (%d revised means)", base, new.size, changed.size
    )
    return ReadoutFit(readout, "incremental", base, int(new.size), int(changed.size))
