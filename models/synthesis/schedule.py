"""Budget planning: how many restarts, how long each lives, when step sizes are checked.

All cases of one synthesis share one plan, computed from the config alone, so a case's trajectory
never depends on which other cases share its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Plan", "plan_budget", "apgd_checkpoints", "MIN_CHECKPOINT_PHASE"]

#: Phases shorter than this get no APGD checkpoints.
MIN_CHECKPOINT_PHASE = 20


@dataclass(frozen=True)
class Plan:
    """Per-case plan of restarts and steps.

    Attributes
    ----------
    rows : tuple of int
        Live restarts in each successive-halving round (``rows[0]`` restarts are started).
    round_ends : tuple of int
        Step counts (per live restart) at which each round ends; the last equals ``total_steps``.
    total_steps : int
        Steps taken by a restart that survives every round.
    switch_step : int
        Step count at which the big-ball phase ends (0: no big-ball phase).
    checkpoints : frozenset of int
        Step counts after which the APGD step-size conditions are checked.
    checkpoint_len : dict of int to int
        Steps since the previous checkpoint, per checkpoint.
    budget : int
        Gradient evaluations actually spent per case (``<=`` the requested budget).
    """

    rows: tuple[int, ...]
    round_ends: tuple[int, ...]
    total_steps: int
    switch_step: int
    checkpoints: frozenset[int]
    checkpoint_len: dict[int, int]
    budget: int


def _halving_rows(r0: int, eta: int) -> list[int]:
    rows = [r0]
    while rows[-1] > 1:
        rows.append(math.ceil(rows[-1] / eta))
    return rows


def apgd_checkpoints(start: int, length: int) -> list[int]:
    """Checkpoint step counts of APGD (Croce & Hein 2020) for a phase of ``length`` steps.

    First check after ``0.22 * length`` steps, then intervals shrinking by ``0.03 * length`` down
    to ``0.06 * length``, exactly as the reference implementation does.
    """
    if length <= 1:
        return []
    k = max(int(0.22 * length), 1)
    dec = max(int(0.03 * length), 1)
    kmin = max(int(0.06 * length), 1)
    out, t = [], 0
    while t + k < length:
        t += k
        out.append(start + t)
        k = max(k - dec, kmin)
    return out


def plan_budget(
    budget: int,
    restarts: int,
    *,
    halving: bool,
    eta: int,
    min_round_steps: int,
    big_ball_fraction: float,
    fixed_steps: int | None = None,
) -> Plan:
    """Split a per-case gradient budget into restarts, rounds, a big-ball phase and checkpoints.

    The number of restarts adapts to the budget: the first round must give every restart at least
    ``min_round_steps`` steps, so small budgets get few long restarts instead of many useless
    short ones.  With successive halving every round gets an equal share of the budget and keeps
    the best ``1 / eta`` of the restarts.  ``fixed_steps`` (no halving) reproduces the plain
    ``restarts x steps`` recipe exactly.
    """
    if budget < 1 or restarts < 1:
        raise ValueError("budget and restarts must be >= 1")
    if fixed_steps is not None and not halving:
        rows, steps = [restarts], [fixed_steps]
    elif not halving:
        r0 = max(1, min(restarts, budget // max(min_round_steps, 1)))
        rows, steps = [r0], [budget // r0]
    else:
        r0 = 1
        for r in range(min(restarts, budget), 0, -1):
            rr = _halving_rows(r, eta)
            if budget // (len(rr) * r) >= min_round_steps:
                r0 = r
                break
        rows = _halving_rows(r0, eta)
        share = budget // len(rows)
        steps = [max(share // r, 1) for r in rows[:-1]]
        used = sum(r * s for r, s in zip(rows[:-1], steps, strict=True))
        steps.append(max((budget - used) // rows[-1], 1))
    ends = list(_cumsum(steps))
    total = ends[-1]
    switch = 0
    if big_ball_fraction > 0 and total >= 2 * min_round_steps:
        switch = min(int(big_ball_fraction * total), steps[0] - 1)
        switch = max(switch, 0)
    # Short phases are left to the per-step annealing: APGD checkpoints one step apart only add noise.
    ck1 = apgd_checkpoints(0, switch) if switch >= MIN_CHECKPOINT_PHASE else []
    ck2 = apgd_checkpoints(switch, total - switch) if total - switch >= MIN_CHECKPOINT_PHASE else []
    lens: dict[int, int] = {}
    for start, cks_phase in ((0, ck1), (switch, ck2)):
        prev = start
        for c in cks_phase:
            lens[c] = c - prev
            prev = c
    cks = ck1 + ck2
    spent = sum(r * s for r, s in zip(rows, steps, strict=True))
    return Plan(tuple(rows), tuple(ends), total, switch, frozenset(cks), lens, spent)


def _cumsum(xs: list[int]) -> list[int]:
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out
