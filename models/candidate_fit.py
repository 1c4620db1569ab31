"""Fit and screen one frozen-feature candidate on the night's data.

The readout is fitted on every image; its held-out predictions come from cross-validation in
which a clean image and all its twins share a fold (models.readout ``groups=``), so every twin on
record is an honest test of how well the candidate predicts perturbation effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.blended_readout import BlendedReadout, blended_cross_val_predict
from models.factorized_readout import FactorizedRidgeCV, factorized_cross_val_predict
from models.readout import MultiRidgeCV, cross_val_predict, one_per_group
from models.screening import ScreeningReport, screen_model, split_half_reliability
from models.tracking import quality_gate
from models.transfer import SiteTransfer, site_transfer

#: The readouts a frozen-feature candidate may have.
SiteReadout = MultiRidgeCV | FactorizedRidgeCV | BlendedReadout


def fit_site_readout(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    factorized_positions: int | None = None,
    blend_positions: tuple[int, ...] | None = None,
    select: np.ndarray | None = None,
) -> SiteReadout:
    """The readout of ``Y`` (images x sites) from features ``X`` that a candidate's layout asks for.

    ``blend_positions``: a :class:`models.blended_readout.BlendedReadout` on feature blocks with
    those positions per channel; ``factorized_positions``: a
    :class:`models.factorized_readout.FactorizedRidgeCV` with that many positions per channel;
    neither: exact-LOO :class:`models.readout.MultiRidgeCV`. ``select``: the rows whose
    leave-one-out error chooses the penalty (default all).
    """
    if blend_positions is not None:
        n_channels = X.shape[1] // sum(blend_positions)
        return BlendedReadout(n_channels, blend_positions).fit(X, Y, select=select)
    if factorized_positions is not None:
        return FactorizedRidgeCV(factorized_positions).fit(X, Y, select=select)
    return MultiRidgeCV().fit(X, Y, select=select)


@dataclass
class CandidateFit:
    """A fitted readout with its screening.

    ``pairs`` (n_pairs, 2) are the (parent, twin) rows that were held out; ``pred_change`` and
    ``obs_change`` (n_pairs, n_sites) are their predicted and observed response changes.
    ``gate`` is the quality gate's (passed, reasons) per site.
    """

    readout: SiteReadout
    report: ScreeningReport
    ceiling: np.ndarray
    gate: tuple[np.ndarray, list[str]]
    pairs: np.ndarray
    pred_change: np.ndarray
    obs_change: np.ndarray
    transfer: SiteTransfer | None


def fit_candidate(
    X: np.ndarray,
    mean: np.ndarray,
    groups: np.ndarray,
    today_trials: np.ndarray,
    pairs: list[tuple[int, int]],
    *,
    ceiling_threshold: float,
    held_out: np.ndarray | None = None,
    readout: MultiRidgeCV | None = None,
    factorized_positions: int | None = None,
    blend_positions: tuple[int, ...] | None = None,
) -> CandidateFit:
    """Fit ``mean`` (images x sites) from features ``X`` and screen the fit.

    ``groups`` gives each image's family (the clean parent's id); ``today_trials`` (images x sites
    x repeats, NaN-padded) gives the noise ceiling; ``pairs`` are (parent row, twin row) of every
    twin on record. With ``held_out`` (a trained core saw the other families), only twins marked
    there count as held out. ``readout``: the readout already fitted on ``X`` and ``mean`` (e.g.
    updated from an earlier night's statistics); default: exact-LOO :class:`MultiRidgeCV`, its
    penalty chosen on one image per family (twins are near-copies of their parents).
    ``factorized_positions``: fit a :class:`models.factorized_readout.FactorizedRidgeCV` on
    features with that many positions per channel instead (held-out predictions from the same
    kind of readout, so the transfer evidence is the factorized model's own).
    ``blend_positions``: fit a :class:`models.blended_readout.BlendedReadout` on feature blocks
    with those positions per channel (ridge on the first, factorized on the others), likewise.
    """
    select = one_per_group(groups)
    fitted: SiteReadout
    if blend_positions is not None:
        fitted = fit_site_readout(X, mean, blend_positions=blend_positions, select=select)
        pred = blended_cross_val_predict(X, mean, groups, X.shape[1] // sum(blend_positions), blend_positions)
    elif factorized_positions is not None:
        fitted = fit_site_readout(X, mean, factorized_positions=factorized_positions, select=select)
        pred = factorized_cross_val_predict(X, mean, groups, factorized_positions)
    else:
        fitted = readout if readout is not None else fit_site_readout(X, mean, select=select)
        pred = cross_val_predict(X, mean, groups=groups)
    ceiling = split_half_reliability(today_trials)
    if held_out is not None:
        pairs = [(p, c) for p, c in pairs if held_out[c]]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    pc, cc = arr[:, 0], arr[:, 1]
    pred_change, obs_change = pred[cc] - pred[pc], mean[cc] - mean[pc]
    transfer = site_transfer(pred_change, obs_change) if len(arr) else None
    kwargs = {}
    if len(arr) >= 3:
        kwargs = {"transfer_pred": (pred[pc], pred[cc]), "transfer_obs": (mean[pc], mean[cc])}
    report = screen_model(pred, mean, ceiling, model_features=X, **kwargs)
    gate = quality_gate(ceiling, ceiling_threshold)
    return CandidateFit(fitted, report, ceiling, gate, arr, pred_change, obs_change, transfer)
