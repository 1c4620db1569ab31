"""One call per day (and one across days) that produces every sensitivity figure.

The worker loads a day's arrays into :class:`~models.sensitivity.data.DayInputs`
pieces, calls :func:`analyze_day`, and stores ``result.to_records()`` as rows
(per site or population, per epsilon, per day, per estimator).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._core import (
    CleanBootstrap,
    PairEstimator,
    Sigma,
    align_clean,
    clean_item_features,
    estimate,
    pair_item_features,
)
from .curves import CurveComparison, compare_curves
from .data import CleanResponses, DayInputs, FloatArray, ModelPredictions, PairedResponses, pool_days
from .estimators import as_generator, model_sensitivity
from .records import SensitivityEstimate, to_records

__all__ = ["POOLED", "DayAnalysis", "DayOverDay", "analyze_day", "analyze_days"]

logger = logging.getLogger(__name__)

#: ``day`` of the figures pooled over all days.
POOLED = "pooled"

_GUIDED: tuple[PairEstimator, ...] = ("plain", "sign_corrected", "plain_noise_corrected", "noise_floor")
_MODEL_FREE: tuple[PairEstimator, ...] = ("plain", "sign_corrected")


@dataclass(frozen=True)
class DayAnalysis:
    """All figures of one day (or of pooled days).

    Attributes
    ----------
    day : hashable or None
    estimates : list of SensitivityEstimate
        Per site and population, for every estimator and epsilon.
    comparisons : dict of str to CurveComparison
        For each IT estimator compared (e.g. ``"sign_corrected"``), how the
        models' population curves over epsilon relate to IT's.
    epsilons : tuple of float
        The epsilons analysed, ascending.
    """

    day: Hashable | None
    estimates: list[SensitivityEstimate]
    comparisons: dict[str, CurveComparison] = field(default_factory=dict)
    epsilons: tuple[float, ...] = ()

    def to_records(self) -> list[dict[str, Any]]:
        """Rows for the database (NaN as None)."""
        return to_records(self.estimates)

    def population(self, estimator: str, model: str | None = None) -> list[SensitivityEstimate]:
        """Population figures of one estimator (and model), by ascending epsilon."""
        rows = [
            e for e in self.estimates if e.site_id is None and e.estimator == estimator and e.model == model
        ]
        return sorted(rows, key=lambda e: -math.inf if e.epsilon is None else e.epsilon)

    def curve(self, estimator: str, model: str | None = None) -> FloatArray:
        """Population values at :attr:`epsilons` (NaN where absent), ndarray of shape (n_eps,)."""
        by_eps = {
            round(e.epsilon, 9): e.value for e in self.population(estimator, model) if e.epsilon is not None
        }
        return np.array([by_eps.get(round(x, 9), math.nan) for x in self.epsilons])


@dataclass(frozen=True)
class DayOverDay:
    """Per-day analyses, the analysis of all days pooled, and optionally cumulative pools.

    ``cumulative[d]`` pools every day up to and including ``d`` (in the mapping's
    order): the figure that sharpens as the loop runs. It is kept out of
    :meth:`to_records`, whose rows would otherwise collide with the per-day ones.
    """

    per_day: dict[Hashable, DayAnalysis]
    pooled: DayAnalysis
    cumulative: dict[Hashable, DayAnalysis] = field(default_factory=dict)

    def to_records(self) -> list[dict[str, Any]]:
        """Per-day rows followed by the pooled rows (``day == POOLED``)."""
        rows = [r for a in self.per_day.values() for r in a.to_records()]
        return rows + self.pooled.to_records()


def analyze_day(
    clean: CleanResponses,
    pairs: Sequence[PairedResponses],
    models: Sequence[ModelPredictions] = (),
    *,
    day: Hashable | None = None,
    sigma: Sigma = "plain",
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: np.random.Generator | int | None = None,
    min_pairs: int = 2,
    min_images: int = 3,
    n_splits: int = 16,
    standard_model: str | None = None,
    compare: Sequence[str] = ("sign_corrected", "plain"),
) -> DayAnalysis:
    """Every sensitivity figure of a day, with bootstrap intervals.

    Parameters
    ----------
    clean : CleanResponses
        Trials of shape (n_sites, n_images, max_repeats).
    pairs : sequence of PairedResponses
        Any number per epsilon (joined per epsilon); guided pairs feed
        ``plain``, ``sign_corrected``, ``plain_noise_corrected`` and
        ``noise_floor``, pairs flagged ``random_direction`` feed
        ``model_free_plain`` and ``model_free_sign_corrected``.
    models : sequence of ModelPredictions
        One per (model version, epsilon); each gives ``estimator="model"`` rows.
    day : hashable, optional
        Stamped on every row.
    sigma : {"plain", "noise_corrected", "none"}
        Normaliser for IT figures; the paper's definition ("plain") by default.
    n_boot, ci, rng : bootstrap resamples, coverage, and Generator (or seed).
    min_pairs, min_images, n_splits : see :func:`~models.sensitivity.estimators.pair_sensitivity`.
    standard_model : str, optional
        Name of the standard network for ``CurveComparison.ratio_to_standard``.
    compare : sequence of str
        IT estimators whose curves are compared with the models'.

    Returns
    -------
    DayAnalysis
    """
    g = as_generator(rng)
    joined = _join_by_epsilon(pairs)
    clean_items_for = _clean_bootstraps(clean, g, n_splits, n_boot)
    opts = {"sigma": sigma, "rng": g, "n_boot": n_boot, "ci": ci, "min_images": min_images, "day": day}
    estimates = _random_pair_estimates(clean_items_for(clean.site_ids), clean.site_ids, opts)
    for p in joined:
        estimates += _pair_estimates(p, clean_items_for(p.site_ids), min_pairs, opts)
    for m in models:
        estimates += model_sensitivity(
            m, n_boot=n_boot, ci=ci, rng=g, min_pairs=min_pairs, min_images=min_images, day=day
        )

    epsilons = tuple(sorted({p.epsilon for p in joined} | {m.epsilon for m in models}))
    result = DayAnalysis(day, estimates, {}, epsilons)
    names = list(dict.fromkeys(m.name for m in models))
    if names:
        _compare_with_models(result, names, standard_model, compare)
    logger.info(
        "sensitivity day=%s: %d epsilons, %d models, %d figures",
        day,
        len(epsilons),
        len(names),
        len(estimates),
    )
    return result


def _join_by_epsilon(pairs: Sequence[PairedResponses]) -> list[PairedResponses]:
    """One PairedResponses per epsilon (every batch at that epsilon joined), by ascending epsilon."""
    by_eps: dict[float, list[PairedResponses]] = {}
    for p in pairs:
        by_eps.setdefault(round(p.epsilon, 9), []).append(p)
    return [PairedResponses.concat(v) for _, v in sorted(by_eps.items())]


def _clean_bootstraps(
    clean: CleanResponses, g: np.random.Generator, n_splits: int, n_boot: int
) -> Callable[[tuple[Hashable, ...]], CleanBootstrap]:
    """Clean resamples per site order, made on first use and shared by every estimator after."""
    cache: dict[tuple[Hashable, ...], CleanBootstrap] = {}

    def clean_items_for(site_ids: tuple[Hashable, ...]) -> CleanBootstrap:
        if site_ids not in cache:
            items = clean_item_features(align_clean(clean, site_ids), g, n_splits)
            cache[site_ids] = CleanBootstrap(items, g, n_boot)
        return cache[site_ids]

    return clean_items_for


def _random_pair_estimates(
    citems: CleanBootstrap, site_ids: tuple[Hashable, ...], opts: dict[str, Any]
) -> list[SensitivityEstimate]:
    """The random-pair baseline over the day's clean images (no epsilon, no pairs)."""
    return estimate(
        kind="random_pair",
        label="random_pair",
        clean=citems,
        pair_items=None,
        site_ids=site_ids,
        epsilon=None,
        min_pairs=0,
        **opts,
    )


def _pair_estimates(
    p: PairedResponses, citems: CleanBootstrap, min_pairs: int, opts: dict[str, Any]
) -> list[SensitivityEstimate]:
    """The IT figures of one epsilon: guided estimators on guided pairs, model-free on random ones."""
    out: list[SensitivityEstimate] = []
    for pair_set, kinds, prefix in (("guided", _GUIDED, ""), ("random", _MODEL_FREE, "model_free_")):
        pitems = pair_item_features(p, pair_set)  # type: ignore[arg-type]
        if pitems.counts.sum() == 0:
            continue
        for kind in kinds:
            out += estimate(
                kind=kind,
                label=prefix + kind,
                clean=citems,
                pair_items=pitems,
                site_ids=p.site_ids,
                epsilon=p.epsilon,
                min_pairs=min_pairs,
                **opts,
            )
    return out


def _compare_with_models(
    result: DayAnalysis, names: list[str], standard_model: str | None, compare: Sequence[str]
) -> None:
    """Fill ``result.comparisons``: each compared IT curve against every model's curve."""
    model_curves = {n: result.curve("model", n) for n in names}
    std = standard_model if standard_model in model_curves else None
    for est in compare:
        result.comparisons[est] = compare_curves(result.curve(est), model_curves, standard=std)


def analyze_days(
    days: Mapping[Hashable, DayInputs], *, cumulative: bool = False, **options: Any
) -> DayOverDay:
    """Analyse each day, all days pooled, and (optionally) cumulative pools.

    Parameters
    ----------
    days : mapping of day to DayInputs
        In chronological order. Sites are matched across days by ``site_id``.
    cumulative : bool
        Also analyse the pool of days up to each day.
    **options
        Passed to :func:`analyze_day` (``rng`` is turned into one Generator shared by all calls).
    """
    options = dict(options)
    options["rng"] = as_generator(options.get("rng"))
    per_day = {d: analyze_day(x.clean, x.pairs, x.models, day=d, **options) for d, x in days.items()}
    pooled_in = pool_days(list(days.values()))
    pooled = analyze_day(pooled_in.clean, pooled_in.pairs, pooled_in.models, day=POOLED, **options)
    cum: dict[Hashable, DayAnalysis] = {}
    if cumulative:
        keys = list(days)
        for k, d in enumerate(keys):
            pool = pool_days([days[x] for x in keys[: k + 1]])
            cum[d] = analyze_day(pool.clean, pool.pairs, pool.models, day=d, **options)
    return DayOverDay(per_day, pooled, cum)
