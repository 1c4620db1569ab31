"""The night's synthesis plan: budget, restarts and shard size that end before the deadline.

Pure arithmetic over measured throughput (gradient evaluations per second, cached per
architecture by the worker): how many gradient evaluations the night's cases cost at a
budget, how long that takes, and which budget fits.  Strength grows with the budget but
saturates (the engine reaches within a percent of its 10x-budget value at about 50
evaluations per case on the benchmark models, ``docs/benchmarks.md``), so the most strength
per second of the night's time is the largest budget, up to the one asked for, that ends
before the deadline margin; below :data:`MIN_BUDGET` a night is not worth starting and is
refused with the expected and the available time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = [
    "MIN_BUDGET",
    "DEFAULT_EVALS_PER_S",
    "NightDoesNotFit",
    "NightPlan",
    "NightWork",
    "budget_ladder",
    "curve_evals",
    "night_evals",
    "plan_synthesis",
    "merge_throughput",
]

#: Smallest gradient budget per case a night is planned with.
MIN_BUDGET = 5
#: Gradient evaluations per second assumed for an architecture never measured (a small CNN at
#: 224x224 on 2 CPU cores, the slowest common setting; a measurement replaces it after one night).
DEFAULT_EVALS_PER_S = 20.0
#: A shard should take about this long, so a crashed shard loses little and shards balance.
SHARD_TARGET_S = 600.0


@dataclass(frozen=True)
class NightWork:
    """What a night synthesises, before the budget is chosen.

    Attributes
    ----------
    n_sites : int
        Sites that get twins (an upper bound before the night's choice: every active site).
    clean_per_site, n_epsilons, n_directions : int
        Guided cases: each (site, clean image, direction) is one epsilon grid.
    n_targeted : int
        Targeted cases per site (images x targeted epsilons), one search each.
    restarts : int
        Restarts asked for (the engine fits them to the budget).
    budget : int
        Gradient evaluations per case asked for: the planner's ceiling.
    warm_share : float
        Extra share of a budget that each epsilon grid's continuation costs.
    """

    n_sites: int
    clean_per_site: int
    n_epsilons: int
    n_directions: int
    n_targeted: int
    restarts: int
    budget: int
    warm_share: float = 0.5


@dataclass(frozen=True)
class NightPlan:
    """The chosen plan and what it is expected to cost (seconds are synthesis only)."""

    budget: int
    restarts: int
    sites_per_shard: int
    evals: int
    evals_per_s: float
    expected_s: float
    available_s: float | None
    fits: bool
    throughput_source: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class NightDoesNotFit(ValueError):
    """Even the smallest budget does not end before the deadline margin."""

    def __init__(self, expected_s: float, available_s: float) -> None:
        self.expected_s, self.available_s = expected_s, available_s
        super().__init__(
            f"synthesis is expected to take {expected_s:.0f} s even at the smallest budget "
            f"({MIN_BUDGET} gradient evaluations per case), but only {max(available_s, 0.0):.0f} s "
            "remain before the deadline margin"
        )


def curve_evals(budget: int, n_epsilons: int, warm_share: float = 0.5) -> int:
    """Gradient evaluations of one epsilon grid by continuation (``models.synthesis.curve_budgets``)."""
    if n_epsilons <= 1:
        return budget
    warm = max(1, int(warm_share * budget) // (n_epsilons - 1))
    return budget + warm * (n_epsilons - 1)


def night_evals(work: NightWork, budget: int) -> int:
    """Gradient evaluations of the night's synthesis at ``budget`` per case."""
    grids = work.n_sites * work.clean_per_site * work.n_directions
    return (
        grids * curve_evals(budget, work.n_epsilons, work.warm_share)
        + work.n_sites * work.n_targeted * budget
    )


def budget_ladder(ceiling: int) -> list[int]:
    """Budgets tried, largest first: the ceiling, then halvings down to :data:`MIN_BUDGET`."""
    out = [max(ceiling, 1)]
    while out[-1] // 2 >= MIN_BUDGET:
        out.append(out[-1] // 2)
    if out[-1] > MIN_BUDGET:
        out.append(MIN_BUDGET)
    return out


def plan_synthesis(
    work: NightWork,
    evals_per_s: float | None,
    available_s: float | None,
    *,
    workers: int = 1,
) -> NightPlan:
    """The largest budget (up to ``work.budget``) whose synthesis ends within ``available_s``.

    ``evals_per_s``: measured throughput of one worker (``None``: :data:`DEFAULT_EVALS_PER_S`);
    ``workers`` synthesis workers run shards in parallel.  ``available_s=None`` (no deadline)
    keeps the budget asked for.  Shards hold enough sites for about :data:`SHARD_TARGET_S`
    seconds each.  Raises :class:`NightDoesNotFit` when even :data:`MIN_BUDGET` overruns.
    """
    if work.n_sites < 0 or work.budget < 1 or workers < 1:
        raise ValueError("n_sites >= 0, budget >= 1 and workers >= 1 required")
    source = "measured" if evals_per_s else "default"
    rate = float(evals_per_s) if evals_per_s else DEFAULT_EVALS_PER_S
    speed = rate * workers
    ladder = budget_ladder(work.budget)
    chosen = ladder[0]
    if available_s is not None:
        fitting = [b for b in ladder if night_evals(work, b) / speed <= available_s]
        if not fitting:
            raise NightDoesNotFit(night_evals(work, ladder[-1]) / speed, available_s)
        chosen = fitting[0]
    evals = night_evals(work, chosen)
    per_site = evals / max(work.n_sites, 1) / rate
    per_shard = max(1, math.floor(SHARD_TARGET_S / per_site)) if per_site > 0 else work.n_sites
    even = max(1, math.ceil(work.n_sites / workers))  # never fewer shards than workers
    return NightPlan(
        budget=chosen,
        restarts=work.restarts,
        sites_per_shard=max(1, min(per_shard, even)),
        evals=evals,
        evals_per_s=rate,
        expected_s=evals / speed,
        available_s=available_s,
        fits=available_s is None or evals / speed <= available_s,
        throughput_source=source,
    )


def merge_throughput(old: dict[str, float] | None, evals: int, seconds: float) -> dict[str, float]:
    """A cache entry updated with one shard's measurement.

    The rate is an exponential average over shards, the newest weighted one half: recent
    enough to follow a changed machine within a few shards, smooth enough that one shard
    slowed by a neighbour does not halve the next night's budget.
    """
    rate = float(evals) / float(seconds) if seconds > 0 else 0.0
    if old and old.get("evals_per_s", 0.0) > 0 and rate > 0:
        rate = 0.5 * float(old["evals_per_s"]) + 0.5 * rate
    n = int((old or {}).get("shards", 0)) + 1
    return {"evals_per_s": rate, "shards": n}
