"""The across-day search finds a site's direction where every surrogate is poor.

A linear site is probed the way the loop probes it: each night, three surrogates that are each
only weakly aligned with the site's gradient (cosine 0.15, fresh errors each night as they are
refitted) propose twins, the search proposes its own, the "recording" measures every twin's change
with noise, and the search is refitted on every pair so far. The search's direction must end far
better aligned than any surrogate and rise from day to day, from measured responses alone.
"""

from __future__ import annotations

import numpy as np

from models.search import PairDifferenceRidge


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_search_beats_poor_surrogates_and_improves_across_days() -> None:
    rng = np.random.default_rng(7)
    n_pix, eps, noise_sd, parents = 768, 1.0, 0.3, 6
    g = 2.0 * _unit(rng.normal(size=n_pix))  # change per unit pixel: 2 spikes/s at eps 1 along g
    deltas: list[np.ndarray] = []
    changes: list[float] = []
    search_dir: np.ndarray | None = None
    cos_by_day = []
    for _day in range(3):
        proposals = []
        for _surrogate in range(3):
            err = _unit(rng.normal(size=n_pix))
            proposals.append(_unit(0.15 * _unit(g) + np.sqrt(1 - 0.15**2) * err))
        if search_dir is not None:
            proposals.append(search_dir)
        for d in proposals:
            for _ in range(parents):
                for sign in (1.0, -1.0):
                    delta = sign * eps * d
                    deltas.append(delta)
                    changes.append(float(g @ delta + noise_sd * rng.normal()))
        model = PairDifferenceRidge().fit(np.array(deltas), np.array(changes)[:, None])
        search_dir = _unit(model.coef_[:, 0])
        cos_by_day.append(float(search_dir @ _unit(g)))
    assert cos_by_day[-1] > 2 * 0.15, cos_by_day  # far beyond any single surrogate
    assert cos_by_day[0] < cos_by_day[1] < cos_by_day[2], cos_by_day
