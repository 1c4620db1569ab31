"""Which surrogate makes each site's twins: measured transfer first, predictivity only before twins.

Sources are the night's fitted candidates, their ensemble (the mean of their predictions,
attacked as one model) and the across-day search. For a site with enough twins on record, the
source whose most promising probes (the pairs it predicts to move the site most) did move the
site most wins, because that is the one whose gradient points where the site's does; the
transfer correlation over all pairs ranks sources with no such measure. Until twins exist
nothing but clean-image predictivity is known, and it decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.transfer import SiteTransfer

__all__ = ["SiteChoice", "SourceEvidence", "choose_per_site"]


@dataclass(frozen=True)
class SourceEvidence:
    """What is known of one source at every site.

    Attributes
    ----------
    name : str
    transfer : SiteTransfer
        Over the pairs shown so far (arrays of shape (n_sites,)).
    predictivity : ndarray of shape (n_sites,)
        Noise-ceiled predictivity on clean images; NaN where unknown.
    effect, effect_se : ndarray of shape (n_sites,), optional
        Sign-corrected observed change per unit L2 of the pairs this source predicts to move the
        site most, and its standard error.
    """

    name: str
    transfer: SiteTransfer
    predictivity: np.ndarray
    effect: np.ndarray | None = None
    effect_se: np.ndarray | None = None

    def score(self, i: int) -> float:
        """What ranks sources at site ``i``: the realized effect of the probes the source believes
        in (models.transfer.realized_effect) where known, else the transfer correlation."""
        if self.effect is not None and np.isfinite(self.effect[i]):
            return float(self.effect[i])
        return float(self.transfer.r[i]) if np.isfinite(self.transfer.r[i]) else -np.inf


@dataclass(frozen=True)
class SiteChoice:
    source: str
    by: str  # "transfer" or "predictivity"
    reason: str


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3f}"


def choose_per_site(sources: list[SourceEvidence], *, min_pairs: int = 8) -> list[SiteChoice]:
    """The source for each site, with a reason that quotes the evidence.

    Parameters
    ----------
    sources : list of SourceEvidence
        All of the same length of site arrays; order breaks exact ties.
    min_pairs : int, default 8
        Twin pairs a source needs at a site before its transfer counts.

    Returns
    -------
    list of SiteChoice, one per site
    """
    if not sources:
        raise ValueError("no sources to choose from")
    n_sites = len(sources[0].predictivity)
    choices = []
    for i in range(n_sites):
        measured = [s for s in sources if s.transfer.n[i] >= min_pairs and np.isfinite(s.transfer.r[i])]
        if measured:
            ranked = sorted(measured, key=lambda s: -s.score(i))
            best = ranked[0]
            t = best.transfer
            reason = ""
            if best.effect is not None and np.isfinite(best.effect[i]):
                se = best.effect_se[i] if best.effect_se is not None else np.nan
                reason = (
                    f"its most promising probes moved the site {_fmt(best.effect[i])} +- {_fmt(se)} "
                    "per unit L2 (chance 0); "
                )
            reason += (
                f"transfer r {_fmt(t.r[i])} [{_fmt(t.r_low[i])}, {_fmt(t.r_high[i])}] over {int(t.n[i])} "
                f"pairs (chance 0), slope {_fmt(t.slope[i])}, sign agreement {_fmt(t.sign_agreement[i])} "
                "(chance 0.5)"
            )
            if len(ranked) > 1:
                reason += "; next: " + ", ".join(f"{s.name} {_fmt(s.score(i))}" for s in ranked[1:3])
            choices.append(SiteChoice(best.name, "transfer", reason))
            continue
        pred = np.array([s.predictivity[i] for s in sources], dtype=np.float64)
        k = int(np.argmax(np.where(np.isfinite(pred), pred, -np.inf)))
        choices.append(
            SiteChoice(
                sources[k].name,
                "predictivity",
                f"fewer than {min_pairs} twin pairs on record: best ceiled predictivity {_fmt(pred[k])}",
            )
        )
    return choices
