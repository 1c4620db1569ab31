"""Spike trains and fixation breaks for simulated RSVP sessions.

Each site fires as an inhomogeneous Poisson process: at its spontaneous rate everywhere, and
at the stimulus-driven rate ``r_i(x_p)`` from ``onset_p + latency_i`` for ``duration_s``.
With latencies of 80-100 ms and a 100 ms response, the 70-170 ms analysis window of the
paper catches most, not all, of the response: :func:`expected_window_count` gives the exact
expected count so tests (and the analysis code) can check their windowing against it.
Everything is vectorised over presentations and sites: a day of 5,000 presentations x 32
sites takes a few tens of milliseconds.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = [
    "PresentationSpikes",
    "SpikeData",
    "expected_window_count",
    "mark_fixation_breaks",
    "simulate_presentation_spikes",
]


class SpikeData(NamedTuple):
    """Spikes of a whole session, sorted by time.

    Attributes
    ----------
    site_index : ndarray of shape (n_spikes,), int64
        Index of the firing site (column of the rates array).
    time_s : ndarray of shape (n_spikes,), float64
        Spike time on the session clock, seconds.
    """

    site_index: np.ndarray
    time_s: np.ndarray

    def per_site(self, n_sites: int) -> list[np.ndarray]:
        """Spike times split by site: a list of ``n_sites`` sorted arrays."""
        order = np.argsort(self.site_index, kind="stable")  # stable keeps time order within a site
        counts = np.bincount(self.site_index, minlength=n_sites)
        return np.split(self.time_s[order], np.cumsum(counts)[:-1])


def _per_site(value: float | np.ndarray, n_sites: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    arr = np.full(n_sites, float(arr)) if arr.ndim == 0 else arr
    if arr.shape != (n_sites,) or np.any(arr < 0):
        raise ValueError(f"{name} must be a non-negative scalar or have shape ({n_sites},)")
    return arr


def simulate_presentation_spikes(
    rates: np.ndarray,
    onsets_s: np.ndarray,
    rng: np.random.Generator,
    *,
    latency_s: float | np.ndarray = 0.09,
    duration_s: float = 0.1,
    spontaneous_rate: float | np.ndarray = 10.0,
    fixation_ok: np.ndarray | None = None,
    rate_cv: float = 0.0,
    t_start_s: float | None = None,
    t_stop_s: float | None = None,
) -> SpikeData:
    """Simulate spikes for a sequence of image presentations.

    Parameters
    ----------
    rates : ndarray of shape (n_presentations, n_sites)
        Stimulus-driven rate of each site during each presentation's response, spikes/s
        (e.g. ``VirtualBrain.rates`` of the image shown).
    onsets_s : ndarray of shape (n_presentations,)
        Image onsets on the session clock, seconds, any order.
    rng : numpy.random.Generator
    latency_s : float or ndarray of shape (n_sites,), default=0.09
        Response onset after image onset (IT: about 80-100 ms).
    duration_s : float, default=0.1
        Length of the driven response.
    spontaneous_rate : float or ndarray of shape (n_sites,), default=10.0
        Rate outside response windows, spikes/s.
    fixation_ok : ndarray of shape (n_presentations,) of bool, optional
        Presentations marked False were not seen (the animal looked away): the site stays at
        its spontaneous rate, so analysis that keeps them is diluted toward spontaneous.
    rate_cv : float, default=0.0
        Coefficient of variation of a per-presentation gamma gain on the driven rate
        (trial-to-trial excitability); 0 gives a pure Poisson process (Fano factor 1).
    t_start_s, t_stop_s : float, optional
        Span of spontaneous firing; default 0.5 s before the first onset to 0.5 s after the
        last response ends.

    Returns
    -------
    SpikeData
        ``(site_index, time_s)``, sorted by time.

    Notes
    -----
    Response windows of one site are assumed not to overlap (RSVP onsets at least
    ``duration_s`` apart). Where they do, the driven excess over spontaneous adds up.
    """
    rates, onsets = _checked_inputs(rates, onsets_s, duration_s, rate_cv)
    n_pres, n_sites = rates.shape
    latency = _per_site(latency_s, n_sites, "latency_s")
    spont = _per_site(spontaneous_rate, n_sites, "spontaneous_rate")
    driven = _driven_rates(rates, spont, fixation_ok, rate_cv, rng)
    t0, t1 = _firing_span(onsets, latency, duration_s, t_start_s, t_stop_s)

    # 1. Spontaneous firing over the whole span.
    n_sp = rng.poisson(spont * max(t1 - t0, 0.0))
    sp_site = np.repeat(np.arange(n_sites), n_sp)
    sp_time = t0 + (t1 - t0) * rng.random(sp_site.size)

    # 2. Inside a response window, rate r instead of spont: thin spontaneous spikes where
    #    r < spont, add a Poisson(r - spont) excess where r > spont.
    if n_pres and sp_site.size:
        keep = _thinning_mask(sp_site, sp_time, onsets, latency, driven, spont, duration_s, rng)
        sp_site, sp_time = sp_site[keep], sp_time[keep]
    ex_site, ex_time = _excess_spikes(driven, spont, onsets, latency, duration_s, rng)

    site = np.concatenate([sp_site, ex_site]).astype(np.int64)
    time = np.concatenate([sp_time, ex_time])
    idx = np.argsort(time, kind="stable")
    return SpikeData(site_index=site[idx], time_s=time[idx])


def _checked_inputs(
    rates: np.ndarray, onsets_s: np.ndarray, duration_s: float, rate_cv: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rates and onsets as float arrays, after checking their shapes and signs."""
    rates = np.asarray(rates, dtype=np.float64)
    onsets = np.asarray(onsets_s, dtype=np.float64)
    if rates.ndim != 2 or onsets.shape != (rates.shape[0],):
        raise ValueError(
            f"need rates (n_presentations, n_sites) and matching onsets; got {rates.shape}, {onsets.shape}"
        )
    if np.any(rates < 0) or duration_s <= 0 or rate_cv < 0:
        raise ValueError("rates must be >= 0, duration_s > 0 and rate_cv >= 0")
    return rates, onsets


def _driven_rates(
    rates: np.ndarray,
    spont: np.ndarray,
    fixation_ok: np.ndarray | None,
    rate_cv: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Rate during each response: spontaneous where fixation broke, times a gamma gain if ``rate_cv``."""
    n_pres = rates.shape[0]
    driven = rates.copy()
    if fixation_ok is not None:
        ok = np.asarray(fixation_ok, dtype=bool)
        if ok.shape != (n_pres,):
            raise ValueError("fixation_ok must have shape (n_presentations,)")
        driven[~ok] = spont
    if rate_cv > 0:
        shape = 1.0 / rate_cv**2
        driven *= rng.gamma(shape, 1.0 / shape, size=(n_pres, 1))
    return driven


def _firing_span(
    onsets: np.ndarray,
    latency: np.ndarray,
    duration_s: float,
    t_start_s: float | None,
    t_stop_s: float | None,
) -> tuple[float, float]:
    """Span of spontaneous firing: as given, else 0.5 s around the presentations' responses."""
    if len(onsets):
        t0 = onsets.min() - 0.5 if t_start_s is None else t_start_s
        t1 = onsets.max() + latency.max() + duration_s + 0.5 if t_stop_s is None else t_stop_s
    else:
        t0, t1 = (t_start_s or 0.0), (t_stop_s or 0.0)
    return t0, t1


def _thinning_mask(
    sp_site: np.ndarray,
    sp_time: np.ndarray,
    onsets: np.ndarray,
    latency: np.ndarray,
    driven: np.ndarray,
    spont: np.ndarray,
    duration_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Which spontaneous spikes survive: inside a response with r < spont, each is kept with r / spont."""
    order = np.argsort(onsets, kind="stable")
    sorted_onsets = onsets[order]
    rel = sp_time - latency[sp_site]
    k = np.searchsorted(sorted_onsets, rel, side="right") - 1
    inside = (k >= 0) & (rel - sorted_onsets[np.clip(k, 0, None)] < duration_s)
    r_here = driven[order[np.clip(k, 0, None)], sp_site]
    with np.errstate(divide="ignore", invalid="ignore"):
        keep_p = np.where(inside & (r_here < spont[sp_site]), r_here / spont[sp_site], 1.0)
    return rng.random(sp_site.size) < keep_p


def _excess_spikes(
    driven: np.ndarray,
    spont: np.ndarray,
    onsets: np.ndarray,
    latency: np.ndarray,
    duration_s: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Sites and times of the Poisson(r - spont) spikes added inside each response where r > spont."""
    n_pres, n_sites = driven.shape
    excess = np.clip(driven - spont[None, :], 0.0, None)
    n_ex = rng.poisson(excess * duration_s)  # (n_pres, n_sites)
    ex_site = np.repeat(np.tile(np.arange(n_sites), n_pres), n_ex.ravel())
    ex_start = np.repeat((onsets[:, None] + latency[None, :]).ravel(), n_ex.ravel())
    return ex_site, ex_start + duration_s * rng.random(ex_site.size)


def expected_window_count(
    rates: np.ndarray,
    window: tuple[float, float] = (0.07, 0.17),
    *,
    latency_s: float | np.ndarray = 0.09,
    duration_s: float = 0.1,
    spontaneous_rate: float | np.ndarray = 10.0,
) -> np.ndarray:
    """Expected spike count in an analysis window after onset, for an isolated presentation.

    ``rate * overlap + spontaneous * (window length - overlap)``, where ``overlap`` is the
    overlap of the window with ``[latency, latency + duration]``.

    Parameters
    ----------
    rates : ndarray of shape (..., n_sites)
        Driven rates, spikes/s.
    window : (start, stop), default=(0.07, 0.17)
        Seconds after image onset.

    Returns
    -------
    ndarray of the shape of ``rates``
        Expected counts (spikes).
    """
    rates = np.asarray(rates, dtype=np.float64)
    n_sites = rates.shape[-1]
    latency = _per_site(latency_s, n_sites, "latency_s")
    spont = _per_site(spontaneous_rate, n_sites, "spontaneous_rate")
    w0, w1 = window
    if w1 < w0:
        raise ValueError("window must be (start, stop) with start <= stop")
    overlap = np.clip(np.minimum(w1, latency + duration_s) - np.maximum(w0, latency), 0.0, None)
    return rates * overlap + spont * ((w1 - w0) - overlap)


def mark_fixation_breaks(
    n_presentations: int, rng: np.random.Generator | int, *, rate: float = 0.05, mean_run: float = 1.0
) -> np.ndarray:
    """Mark which presentations the animal kept fixation on.

    Breaks come in runs (an animal that looks away usually misses the next image too): a
    two-state Markov chain whose stationary break probability is ``rate`` and whose breaks
    last ``mean_run`` presentations on average (``mean_run=1``: independent breaks).

    Parameters
    ----------
    n_presentations : int
    rng : numpy.random.Generator or int
    rate : float in [0, 1), default=0.05
        Long-run fraction of presentations with broken fixation.
    mean_run : float >= 1, default=1.0

    Returns
    -------
    fixation_ok : ndarray of shape (n_presentations,), bool
        False where fixation was broken.
    """
    if not 0.0 <= rate < 1.0 or mean_run < 1.0:
        raise ValueError("need 0 <= rate < 1 and mean_run >= 1")
    rng = np.random.default_rng(rng)
    if mean_run == 1.0:
        return rng.random(n_presentations) >= rate
    p_stay = 1.0 - 1.0 / mean_run  # P(break -> break)
    p_start = rate * (1.0 - p_stay) / (1.0 - rate)  # P(ok -> break), gives stationary `rate`
    if p_start > 1.0:
        raise ValueError("rate too high for this mean_run")
    u = rng.random(n_presentations)
    broken = np.empty(n_presentations, dtype=bool)
    state = bool(rng.random() < rate)
    for i in range(n_presentations):  # a short scalar loop: thousands of steps per day
        state = u[i] < (p_stay if state else p_start)
        broken[i] = state
    return ~broken


class _SpikingPopulation(Protocol):
    """What :class:`PresentationSpikes` needs of a population."""

    latency_s_: np.ndarray
    spontaneous_rate_: np.ndarray

    def rates(self, images: np.ndarray) -> np.ndarray: ...


class PresentationSpikes:
    """``simulate_spikes`` for a population with ``rates``, ``latency_s_`` and ``spontaneous_rate_``.

    One definition for every simulated family, so they all turn true rates into spikes alike.
    """

    def simulate_spikes(
        self: _SpikingPopulation,
        images: np.ndarray,
        onsets_s: np.ndarray,
        rng: np.random.Generator,
        *,
        fixation_ok: np.ndarray | None = None,
        **kwargs: Any,
    ) -> SpikeData:
        """Spikes of this population for a sequence of presentations.

        :func:`simulate_presentation_spikes` with the population's true rates, latencies and
        spontaneous rates; ``images`` has shape (n_presentations, 3, H, W) (one row per
        presentation, repeats included). Extra keywords pass through.
        """
        return simulate_presentation_spikes(
            self.rates(images),
            onsets_s,
            rng,
            latency_s=self.latency_s_,
            spontaneous_rate=self.spontaneous_rate_,
            fixation_ok=fixation_ok,
            **kwargs,
        )
