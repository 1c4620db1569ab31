"""RSVP scheduling of a day's batch: repeats balanced, clean/perturbed twins far apart.

Why twins are kept apart: showing a perturbed image right after its clean parent
would let adaptation, not the perturbation, drive the difference (the paper showed
each pair about 25 minutes apart). Why repeats are balanced in blocks: every image
is shown once per block, so slow drift of a chronic site over the session hits
clean and perturbed images alike.

The schedule is built from sort keys: each block is a random layout of every
image; a clean image gets a uniform position and each of its twins is offset from
it by roughly the target separation. Sorting the keys gives the order. The
target is capped at what a block can hold (half a block); the achieved mean
separation is reported so a short day says how far it fell short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduleConfig:
    """Keyword-only knobs of the RSVP schedule."""

    repeats: int = 4
    on_ms: int = 100
    off_ms: int = 100
    images_per_trial: int = 8
    pair_separation_s: float = 25 * 60.0
    seed: int = 0


@dataclass(frozen=True)
class ScheduleItem:
    seq: int
    image: str
    trial: int
    block: int
    on_ms: int
    off_ms: int


@dataclass(frozen=True)
class Schedule:
    items: list[ScheduleItem]
    target_separation_s: float
    mean_pair_separation_s: float
    min_pair_separation_s: float
    capped: bool

    @property
    def duration_s(self) -> float:
        if not self.items:
            return 0.0
        return len(self.items) * (self.items[0].on_ms + self.items[0].off_ms) / 1000.0


def schedule_rsvp(
    images: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    config: ScheduleConfig = ScheduleConfig(),
    repeats_of: Mapping[str, int] | None = None,
) -> Schedule:
    """Order ``images`` (unique ids) for RSVP with ``config.repeats`` balanced repeats.

    ``repeats_of`` gives some images another number of repeats (adaptive allocation,
    :mod:`models.allocation`). There are then as many blocks as the largest number of repeats,
    and an image with ``r`` repeats appears in ``r`` blocks spread evenly over the day, so slow
    drift still hits every image alike.

    Parameters
    ----------
    images : sequence of str
        Every unique image of the batch (clean, reference, perturbed...).
    pairs : sequence of (clean, perturbed)
        Twins to keep apart; a clean image may have many perturbed twins.
    config : ScheduleConfig

    Returns
    -------
    Schedule
        Items in presentation order, with the achieved mean and minimum
        clean/twin separation (seconds, within a block).
    """
    unique, index = _checked_batch(images, pairs, config)
    n = len(unique)
    slot_s = (config.on_ms + config.off_ms) / 1000.0
    target_slots = config.pair_separation_s / slot_s
    twins: dict[int, list[int]] = {}
    for clean, pert in pairs:
        twins.setdefault(index[clean], []).append(index[pert])

    rng = np.random.default_rng(config.seed)
    members = _block_members(unique, config.repeats, repeats_of, rng)
    order: list[int] = []
    blocks: list[int] = []
    for block, present in enumerate(members):
        m = len(present)
        block_order = _block_order(present, twins, min(target_slots, m / 2.0), target_slots > m / 2.0, rng)
        if order and block_order[0] == order[-1] and m > 1:  # no back-to-back repeat across blocks
            block_order[0], block_order[1] = block_order[1], block_order[0]
        order.extend(int(i) for i in block_order)
        blocks.extend([block] * m)

    items = _items(unique, order, blocks, config)
    seps = pair_separations(items, pairs, slot_s)
    return Schedule(
        items=items,
        target_separation_s=config.pair_separation_s,
        mean_pair_separation_s=float(np.mean(seps)) if len(seps) else float("nan"),
        min_pair_separation_s=float(np.min(seps)) if len(seps) else float("nan"),
        capped=target_slots > n / 2.0,
    )


def _checked_batch(
    images: Sequence[str], pairs: Sequence[tuple[str, str]], config: ScheduleConfig
) -> tuple[list[str], dict[str, int]]:
    """The batch's images and their indices, after refusing duplicates, bad knobs and bad pairs."""
    unique = list(dict.fromkeys(images))
    if len(unique) != len(images):
        raise ValueError("images must be unique ids; repeats come from config.repeats")
    if config.repeats < 1 or config.images_per_trial < 1 or config.on_ms <= 0 or config.off_ms < 0:
        raise ValueError("repeats and images_per_trial must be >= 1, on_ms > 0, off_ms >= 0")
    index = {img: i for i, img in enumerate(unique)}
    for clean, pert in pairs:
        if clean not in index or pert not in index:
            raise ValueError(f"pair ({clean}, {pert}) names an image that is not in the batch")
        if clean == pert:
            raise ValueError(f"image {clean} is paired with itself")
    return unique, index


def _block_order(
    present: list[int],
    twins: dict[int, list[int]],
    offset: float,
    capped: bool,
    rng: np.random.Generator,
) -> list[int]:
    """One block's presentation order: random keys, each twin ``offset`` slots (jittered) from its clean."""
    m = len(present)
    local = {j: k for k, j in enumerate(present)}
    keys = rng.uniform(0, m, size=m)
    for clean_i, pert_ids in twins.items():
        if clean_i not in local:
            continue
        p = keys[local[clean_i]]
        for pert_i in pert_ids:
            if pert_i not in local:
                continue
            o = offset * rng.uniform(0.8, 1.2) if not capped else offset * rng.uniform(0.9, 1.0)
            candidates = [x for x in (p + o, p - o) if 0 <= x < m]
            if not candidates:  # offset too long for this clean position: go to the far end
                candidates = [m - 1e-6 if p < m / 2 else 0.0]
            keys[local[pert_i]] = candidates[rng.integers(len(candidates))]
    # Random tie-breaking, then sort.
    return [present[k] for k in np.lexsort((rng.random(m), keys))]


def _items(
    unique: list[str], order: list[int], blocks: list[int], config: ScheduleConfig
) -> list[ScheduleItem]:
    """Schedule items in presentation order, cut into trials of ``config.images_per_trial``."""
    return [
        ScheduleItem(
            seq=s,
            image=unique[i],
            trial=s // config.images_per_trial,
            block=blocks[s],
            on_ms=config.on_ms,
            off_ms=config.off_ms,
        )
        for s, i in enumerate(order)
    ]


def _block_members(
    unique: list[str], repeats: int, repeats_of: Mapping[str, int] | None, rng: np.random.Generator
) -> list[list[int]]:
    """Which images (indices) each block shows; every image in every block unless ``repeats_of``."""
    n = len(unique)
    if not repeats_of:
        return [list(range(n)) for _ in range(repeats)]
    reps = [int(repeats_of.get(img, repeats)) for img in unique]
    if min(reps, default=1) < 1:
        raise ValueError("every image needs at least one repeat")
    n_blocks = max(reps, default=repeats)
    members: list[list[int]] = [[] for _ in range(n_blocks)]
    for j, r in enumerate(reps):
        phase = rng.uniform(0, 1)
        for b in sorted({int((k + phase) * n_blocks / r) for k in range(r)}):
            members[min(b, n_blocks - 1)].append(j)
    return [m for m in members if m]


def pair_separations(
    items: Sequence[ScheduleItem], pairs: Sequence[tuple[str, str]], slot_s: float
) -> np.ndarray:
    """Seconds between each clean image and its twin, within each block."""
    where: dict[tuple[int, str], int] = {(it.block, it.image): it.seq for it in items}
    n_blocks = max((it.block for it in items), default=-1) + 1
    out = [
        abs(where[(b, clean)] - where[(b, pert)]) * slot_s
        for b in range(n_blocks)
        for clean, pert in pairs
        if (b, clean) in where and (b, pert) in where
    ]
    return np.asarray(out, dtype=float)
