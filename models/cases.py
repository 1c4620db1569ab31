"""Which twins a synthesis shard makes: clean images, seeds, and the guided, targeted and random cases.

Everything here is derived from content only (the night's seed, site ids, pool positions and the
day), never from database ids or timing, so any worker on any database plans the very same cases
and a re-run shard remakes the very same images.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.synthesis import Case

DIRECTION_SIGN = {"up": 1, "down": -1}


def site_seed(seed: int, site_id: str, salt: str = "") -> int:
    """A 31-bit seed from content only (site id and salt), so any database remakes the same images.

    31 bits because it is stored as the image's lineage seed (a 32-bit integer column).
    """
    return (int(seed) * 1_000_003 + zlib.crc32(f"{site_id}:{salt}".encode())) % (2**31)


def choose_images(n_pool: int, k: int, seed: int) -> list[int]:
    """``k`` distinct pool indices (all of them when ``k >= n_pool``), sorted, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_pool, size=min(k, n_pool), replace=False).tolist())


def preferred_category(scores: torch.Tensor | np.ndarray, categories: Sequence[str | None]) -> str | None:
    """The category whose images a site's model predicts the highest mean response to.

    ``scores`` holds one prediction per pool image; uncategorised images are ignored. None when
    fewer than two categories exist (there is nothing to prefer one over).
    """
    cats = sorted({c for c in categories if c})
    if len(cats) < 2:
        return None
    s = torch.as_tensor(scores)
    means = {c: float(s[[k for k, cc in enumerate(categories) if cc == c]].mean()) for c in cats}
    return max(means, key=means.__getitem__)


def category_direction(f_pool: torch.Tensor, categories: Sequence[str | None], category: str) -> torch.Tensor:
    """The model-output direction from the pool's mean toward ``category``'s mean (targeted objective)."""
    rows = [k for k, c in enumerate(categories) if c == category]
    return f_pool[rows].mean(0) - f_pool.mean(0)


@dataclass(frozen=True)
class ShardSpec:
    """What one shard makes per site (from the night's config and the shard's params)."""

    seed: int
    clean_per_site: int
    epsilons: Sequence[float]
    directions: Sequence[str] = ("up", "down")
    slots: tuple[int, int] | None = None  # which of a site's clean-image slots; None = all
    extras: bool = True  # targeted and random twins (they come with slot 0's shard)
    targeted_epsilons: Sequence[float] = ()
    targeted_per_site: int = 0
    random_per_site: int = 0
    day: int = 0  # random directions are drawn anew each day


@dataclass(frozen=True)
class TargetedCase:
    """Push image row ``image`` toward ``category`` along ``direction`` (model outputs), for a site."""

    site_id: str
    site: int
    image: int
    eps: float
    direction: torch.Tensor
    category: str
    seed: int


@dataclass(frozen=True)
class RandomCase:
    """A model-free twin: pool image ``pool_index`` moved ``eps`` along a seeded random direction."""

    site_id: str
    site: int
    pool_index: int
    eps: float
    seed: int


@dataclass
class ShardPlan:
    """A shard's cases. ``rows[r]`` is the pool index of image row ``r`` (rows in order of first use)."""

    rows: list[int] = field(default_factory=list)
    guided: list[Case] = field(default_factory=list)
    targeted: list[TargetedCase] = field(default_factory=list)
    random: list[RandomCase] = field(default_factory=list)

    def row(self, pool_index: int) -> int:
        """The image row of a pool image, adding it on first use."""
        if pool_index not in self._row_of:
            self._row_of[pool_index] = len(self.rows)
            self.rows.append(pool_index)
        return self._row_of[pool_index]

    def __post_init__(self) -> None:
        self._row_of = {p: r for r, p in enumerate(self.rows)}


def plan_shard(
    sites: Sequence[str],
    model_sites: Sequence[str],
    spec: ShardSpec,
    categories: Sequence[str | None],
    f_pool: torch.Tensor | None = None,
) -> ShardPlan:
    """Every case of a shard, site by site: guided up/down twins, then targeted, then random ones.

    ``categories`` has one entry per pool image; ``f_pool`` (pool images x model sites) is the
    model's prediction of the pool, needed only for targeted twins.
    """
    plan = ShardPlan()
    lo, hi = spec.slots or (0, spec.clean_per_site)
    for sid in sites:
        col = list(model_sites).index(sid)
        picks = choose_images(len(categories), spec.clean_per_site, site_seed(spec.seed, sid))[lo:hi]
        for i in picks:
            for eps in spec.epsilons:
                for d in spec.directions:
                    plan.guided.append(
                        Case(
                            site=col,
                            image=plan.row(i),
                            eps=float(eps),
                            direction=DIRECTION_SIGN[d],
                            # The engine's own derived seeds are 63-bit: too wide for the lineage column.
                            seed=site_seed(spec.seed, sid, f"guided:{i}:{eps}:{d}"),
                        )
                    )
        if spec.extras and f_pool is not None:
            plan.targeted += _targeted(plan, sid, col, spec, categories, f_pool)
    if spec.extras:
        plan.random = random_cases(sites, model_sites, spec, len(categories))
    return plan


def _targeted(
    plan: ShardPlan,
    sid: str,
    col: int,
    spec: ShardSpec,
    categories: Sequence[str | None],
    f_pool: torch.Tensor,
) -> list[TargetedCase]:
    """A site's super-stimuli: images of other categories pushed toward its preferred one."""
    if not (spec.targeted_epsilons and spec.targeted_per_site):
        return []
    preferred = preferred_category(f_pool[:, col], categories)
    if preferred is None:
        return []
    direction = category_direction(f_pool, categories, preferred)
    others = [k for k, c in enumerate(categories) if c != preferred]
    out = []
    for j in choose_images(len(others), spec.targeted_per_site, site_seed(spec.seed, sid, "target")):
        for eps in spec.targeted_epsilons:
            seed = site_seed(spec.seed, sid, f"target:{others[j]}:{eps}")
            out.append(TargetedCase(sid, col, plan.row(others[j]), float(eps), direction, preferred, seed))
    return out


def random_cases(
    sites: Sequence[str], model_sites: Sequence[str], spec: ShardSpec, n_pool: int
) -> list[RandomCase]:
    """Random-direction twins per site and epsilon; seeded by the day, so no night remakes yesterday's."""
    out = []
    for sid in sites:
        if not spec.random_per_site:
            continue
        col = list(model_sites).index(sid)
        for i in choose_images(n_pool, spec.random_per_site, site_seed(spec.seed, sid, "random")):
            for eps in spec.epsilons:
                seed = site_seed(spec.seed, sid, f"random:{spec.day}:{i}:{eps}")
                out.append(RandomCase(sid, col, i, float(eps), seed))
    return out
