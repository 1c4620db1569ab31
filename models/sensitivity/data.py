"""Containers for the arrays a sensitivity analysis reads.

The worker fills these from the database (responses per site, per presentation);
everything downstream is arrays. Ragged data (sites with different numbers of
pairs, images with different numbers of repeats) is NaN padded: a NaN trial is a
trial that was not recorded, a pair whose trials are all NaN does not exist.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

__all__ = [
    "CleanResponses",
    "DayInputs",
    "ModelPredictions",
    "PairedResponses",
    "pool_days",
    "trial_means",
]


def _as_float(name: str, x: ArrayLike, ndim: int) -> FloatArray:
    a = np.array(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _check_sites(site_ids: Sequence[Hashable], n_sites: int, what: str) -> tuple[Hashable, ...]:
    ids = tuple(site_ids)
    if len(ids) != n_sites:
        raise ValueError(f"{what}: {len(ids)} site_ids for {n_sites} sites")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: site_ids are not unique")
    return ids


def trial_means(trials: FloatArray) -> tuple[FloatArray, IntArray]:
    """Mean over the last (repeat) axis, ignoring NaN padding.

    Returns
    -------
    means : ndarray of shape ``trials.shape[:-1]``
        NaN where no repeat was recorded (no warning is raised).
    counts : ndarray of int, same shape
        Number of recorded repeats.
    """
    finite = np.isfinite(trials)
    counts = finite.sum(axis=-1)
    sums = np.where(finite, trials, 0.0).sum(axis=-1)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    return means, counts.astype(np.int64)


def _reindex_sites(
    a: np.ndarray, ids: Sequence[Hashable], all_ids: Sequence[Hashable], fill: object
) -> np.ndarray:
    """Rows of ``a`` (one per site in ``ids``) placed in the order of ``all_ids``."""
    pos = {s: k for k, s in enumerate(ids)}
    out = np.full((len(all_ids),) + a.shape[1:], fill, dtype=a.dtype)
    for k, s in enumerate(all_ids):
        if s in pos:
            out[k] = a[pos[s]]
    return out


def _union_ids(groups: Iterable[Sequence[Hashable]]) -> tuple[Hashable, ...]:
    seen: dict[Hashable, None] = {}
    for ids in groups:
        for s in ids:
            seen.setdefault(s, None)
    return tuple(seen)


def _concat_sites(
    arrays: Sequence[np.ndarray], ids: Sequence[Sequence[Hashable]], all_ids: Sequence[Hashable], fill: object
) -> np.ndarray:
    """Concatenate along axis 1 after aligning sites; later axes padded to the largest."""
    tail = tuple(max(a.shape[k] for a in arrays) for k in range(2, arrays[0].ndim))
    parts = []
    for a, i in zip(arrays, ids, strict=True):
        a = _reindex_sites(a, i, all_ids, fill)
        if tail:
            padded = np.full(a.shape[:2] + tail, fill, dtype=a.dtype)
            padded[(slice(None), slice(None)) + tuple(slice(0, s) for s in a.shape[2:])] = a
            a = padded
        parts.append(a)
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True, eq=False)
class CleanResponses:
    """Trial responses of every site to the clean images of one day.

    They give each site's spread ``sigma_i`` (the normaliser), the random-pair
    baseline and the repeat-split noise floor. The reference set shown every day
    belongs here, as do the clean members of the perturbation pairs.

    Parameters
    ----------
    site_ids : sequence of hashable, length n_sites
        Stable site identifiers, in row order.
    trials : array-like of shape (n_sites, n_images, max_repeats)
        Spike counts per repeat; NaN pads missing repeats. An image a site never
        saw is all NaN for that site.
    """

    site_ids: tuple[Hashable, ...]
    trials: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        trials = _as_float("trials", self.trials, 3)
        object.__setattr__(self, "trials", trials)
        object.__setattr__(self, "site_ids", _check_sites(self.site_ids, trials.shape[0], "CleanResponses"))

    @property
    def n_sites(self) -> int:
        return self.trials.shape[0]

    @property
    def means(self) -> FloatArray:
        """Trial-averaged responses, ndarray of shape (n_sites, n_images)."""
        return trial_means(self.trials)[0]


@dataclass(frozen=True, eq=False)
class PairedResponses:
    """Clean/perturbed image pairs at one epsilon, per site.

    Pair ``(i, j)`` is the j-th pair made for site ``i`` (synthesised on the
    surrogate model for that site), so the pair axis is per site and ragged:
    sites with fewer pairs are NaN padded. Build it from a table of all sites'
    responses to all pairs with :meth:`from_all_sites`.

    Parameters
    ----------
    epsilon : float
        L2 norm of the perturbations.
    site_ids : sequence of hashable, length n_sites
    clean : array-like of shape (n_sites, n_pairs, max_repeats)
        Trial responses of site i to the clean image x_ij; NaN padded.
    perturbed : array-like of shape (n_sites, n_pairs, max_repeats_perturbed)
        Trial responses of site i to x_ij + delta_ij; NaN padded.
    pred_clean, pred_perturbed : array-like of shape (n_sites, n_pairs)
        Surrogate-model predictions f_i(x_ij) and f_i(x_ij + delta_ij). Only the
        sign of their difference is used, by the sign-corrected estimator.
    random_direction : array-like of bool, shape (n_sites, n_pairs), optional
        True for model-free pairs (random direction of the same norm). These feed
        the ``model_free_*`` estimators and are excluded from the guided ones.
    """

    epsilon: float
    site_ids: tuple[Hashable, ...]
    clean: FloatArray = field(repr=False)
    perturbed: FloatArray = field(repr=False)
    pred_clean: FloatArray = field(repr=False)
    pred_perturbed: FloatArray = field(repr=False)
    random_direction: BoolArray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        clean = _as_float("clean", self.clean, 3)
        perturbed = _as_float("perturbed", self.perturbed, 3)
        pc = _as_float("pred_clean", self.pred_clean, 2)
        pp = _as_float("pred_perturbed", self.pred_perturbed, 2)
        if perturbed.shape[:2] != clean.shape[:2] or pc.shape != clean.shape[:2] or pp.shape != pc.shape:
            raise ValueError(
                "clean, perturbed, pred_clean, pred_perturbed disagree on (n_sites, n_pairs): "
                f"{clean.shape[:2]}, {perturbed.shape[:2]}, {pc.shape}, {pp.shape}"
            )
        rd = (
            np.zeros(pc.shape, dtype=bool)
            if self.random_direction is None
            else np.broadcast_to(np.asarray(self.random_direction, dtype=bool), pc.shape).copy()
        )
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "perturbed", perturbed)
        object.__setattr__(self, "pred_clean", pc)
        object.__setattr__(self, "pred_perturbed", pp)
        object.__setattr__(self, "random_direction", rd)
        object.__setattr__(self, "site_ids", _check_sites(self.site_ids, clean.shape[0], "PairedResponses"))

    @property
    def n_sites(self) -> int:
        return self.clean.shape[0]

    @classmethod
    def from_all_sites(
        cls,
        *,
        epsilon: float,
        site_ids: Sequence[Hashable],
        clean: ArrayLike,
        perturbed: ArrayLike,
        pred_clean: ArrayLike,
        pred_perturbed: ArrayLike,
        pair_site: ArrayLike,
        random_direction: ArrayLike | None = None,
    ) -> PairedResponses:
        """Keep, for each site, only the pairs that were made for it.

        The rig shows every pair to every site, so the worker naturally holds all
        sites' responses to all pairs. A perturbation made for site k says little
        about site i (it was not optimised for it), so site i is scored on its own
        pairs only.

        Parameters
        ----------
        clean, perturbed : array-like of shape (n_sites, n_all_pairs, max_repeats)
        pred_clean, pred_perturbed : array-like of shape (n_sites, n_all_pairs)
        pair_site : array-like of int, shape (n_all_pairs,)
            Row index (into ``site_ids``) of the site each pair was made for; -1
            for a pair that serves every site (e.g. a shared random-direction pair).
        random_direction : array-like of bool, shape (n_all_pairs,), optional
        """
        c = _as_float("clean", clean, 3)
        p = _as_float("perturbed", perturbed, 3)
        pc = _as_float("pred_clean", pred_clean, 2)
        pp = _as_float("pred_perturbed", pred_perturbed, 2)
        owner = np.asarray(pair_site, dtype=np.int64)
        n_sites, n_all = pc.shape
        if owner.shape != (n_all,) or np.any((owner < -1) | (owner >= n_sites)):
            raise ValueError("pair_site must hold one site row index (or -1) per pair")
        rd = np.zeros(n_all, bool) if random_direction is None else np.asarray(random_direction, bool)
        cols = [np.flatnonzero((owner == i) | (owner == -1)) for i in range(n_sites)]
        width = max([len(k) for k in cols] + [1])
        out_c = np.full((n_sites, width, c.shape[2]), np.nan)
        out_p = np.full((n_sites, width, p.shape[2]), np.nan)
        out_pc = np.full((n_sites, width), np.nan)
        out_pp = np.full((n_sites, width), np.nan)
        out_rd = np.zeros((n_sites, width), bool)
        for i, k in enumerate(cols):
            n = len(k)
            out_c[i, :n], out_p[i, :n] = c[i, k], p[i, k]
            out_pc[i, :n], out_pp[i, :n], out_rd[i, :n] = pc[i, k], pp[i, k], rd[k]
        return cls(epsilon, tuple(site_ids), out_c, out_p, out_pc, out_pp, out_rd)

    @classmethod
    def concat(cls, parts: Sequence[PairedResponses]) -> PairedResponses:
        """Join pair sets of one epsilon (e.g. guided and random, or several days).

        Sites are aligned by id; a site missing from a part gets no pairs from it.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        eps = {round(p.epsilon, 9) for p in parts}
        if len(eps) != 1:
            raise ValueError(f"cannot concatenate pairs of different epsilons: {sorted(eps)}")
        ids = _union_ids(p.site_ids for p in parts)
        pid = [p.site_ids for p in parts]
        return cls(
            parts[0].epsilon,
            ids,
            _concat_sites([p.clean for p in parts], pid, ids, np.nan),
            _concat_sites([p.perturbed for p in parts], pid, ids, np.nan),
            _concat_sites([p.pred_clean for p in parts], pid, ids, np.nan),
            _concat_sites([p.pred_perturbed for p in parts], pid, ids, np.nan),
            _concat_sites([p.random_direction for p in parts], pid, ids, False),  # type: ignore[misc]
        )


@dataclass(frozen=True, eq=False)
class ModelPredictions:
    """One model version's predictions, for its sensitivity at one epsilon.

    The model is scored with the same formulas as IT on noise-free predictions.
    For the paper's comparison (a model's own sensitivity), the pairs are those
    synthesised on that model; for transfer, pass the IT pairs. The pair axis is
    independent of any :class:`PairedResponses`.

    Parameters
    ----------
    name : str
        Model version (e.g. ``"resnet50-standard"``).
    epsilon : float
    site_ids : sequence of hashable, length n_sites
    clean : array-like of shape (n_sites, n_images)
        f_i on the clean images; gives the model's sigma_i. NaN where absent.
    pred_clean, pred_perturbed : array-like of shape (n_sites, n_pairs)
        f_i(x_ij) and f_i(x_ij + delta_ij); NaN pads missing pairs.
    """

    name: str
    epsilon: float
    site_ids: tuple[Hashable, ...]
    clean: FloatArray = field(repr=False)
    pred_clean: FloatArray = field(repr=False)
    pred_perturbed: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        clean = _as_float("clean", self.clean, 2)
        pc = _as_float("pred_clean", self.pred_clean, 2)
        pp = _as_float("pred_perturbed", self.pred_perturbed, 2)
        if pc.shape != pp.shape or pc.shape[0] != clean.shape[0]:
            raise ValueError(f"shapes disagree: clean {clean.shape}, pairs {pc.shape} and {pp.shape}")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "pred_clean", pc)
        object.__setattr__(self, "pred_perturbed", pp)
        object.__setattr__(self, "site_ids", _check_sites(self.site_ids, clean.shape[0], "ModelPredictions"))

    def as_responses(self) -> tuple[PairedResponses, CleanResponses]:
        """The same predictions as one-repeat, noise-free 'responses'."""
        pairs = PairedResponses(
            self.epsilon,
            self.site_ids,
            self.pred_clean[..., None],
            self.pred_perturbed[..., None],
            self.pred_clean,
            self.pred_perturbed,
        )
        return pairs, CleanResponses(self.site_ids, self.clean[..., None])

    @classmethod
    def concat(cls, parts: Sequence[ModelPredictions]) -> ModelPredictions:
        """Pool one model's predictions of one epsilon over days (sites aligned by id)."""
        if len({(p.name, round(p.epsilon, 9)) for p in parts}) != 1:
            raise ValueError("can only concatenate predictions of one model at one epsilon")
        ids = _union_ids(p.site_ids for p in parts)
        pid = [p.site_ids for p in parts]
        return cls(
            parts[0].name,
            parts[0].epsilon,
            ids,
            _concat_sites([p.clean for p in parts], pid, ids, np.nan),
            _concat_sites([p.pred_clean for p in parts], pid, ids, np.nan),
            _concat_sites([p.pred_perturbed for p in parts], pid, ids, np.nan),
        )


@dataclass(frozen=True, eq=False)
class DayInputs:
    """Everything one day contributes: clean responses, pairs per epsilon, model predictions.

    ``pairs`` may hold several entries per epsilon (guided and random sets, say);
    they are concatenated. Site order may differ between members: sites are
    matched by id.
    """

    clean: CleanResponses
    pairs: Sequence[PairedResponses]
    models: Sequence[ModelPredictions] = ()


def pool_days(days: Sequence[DayInputs]) -> DayInputs:
    """Pool several days into one input: images and pairs of all days, sites matched by id.

    Every day's clean image counts as its own image (a reference image shown on
    three days contributes three image means); this keeps day-to-day drift in
    sigma_i rather than hiding it.
    """
    if not days:
        raise ValueError("no days to pool")
    ids = _union_ids(d.clean.site_ids for d in days)
    clean = CleanResponses(
        ids, _concat_sites([d.clean.trials for d in days], [d.clean.site_ids for d in days], ids, np.nan)
    )
    by_eps: dict[float, list[PairedResponses]] = {}
    for d in days:
        for p in d.pairs:
            by_eps.setdefault(round(p.epsilon, 9), []).append(p)
    by_model: dict[tuple[str, float], list[ModelPredictions]] = {}
    for d in days:
        for m in d.models:
            by_model.setdefault((m.name, round(m.epsilon, 9)), []).append(m)
    return DayInputs(
        clean,
        [PairedResponses.concat(v) for v in by_eps.values()],
        [ModelPredictions.concat(v) for v in by_model.values()],
    )
