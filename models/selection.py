"""Which surrogate makes each site's twins: measured transfer first, predictivity only before twins.

Sources are the night's fitted candidates, their ensemble (the mean of their predictions,
attacked as one model) and the across-day search. What a choice is for is measurable directly:
a source's own twins for a site, shown and recorded, either moved the site in the intended
direction or not. A source whose own twins clearly did is kept; otherwise an untried source is
tried (exploration), so a poor first choice is never kept for lack of evidence. Predictions along
probes other sources chose (the transfer correlation) are reported, but they rank a source by
directions its own attack does not take. Until twins exist nothing but clean-image predictivity
is known, and it decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.transfer import SiteTransfer

__all__ = ["SiteChoice", "SourceEvidence", "choose_per_site", "search_share_sites"]


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
    effect, effect_se, n_own : ndarray of shape (n_sites,), optional
        Sign-corrected observed change per unit L2 of this source's own twins for each site, its
        standard error and how many twins (models.transfer.own_twin_effect).
    """

    name: str
    transfer: SiteTransfer
    predictivity: np.ndarray
    effect: np.ndarray | None = None
    effect_se: np.ndarray | None = None
    n_own: np.ndarray | None = None

    def own_effect(self, i: int) -> float:
        """The measured effect of this source's own twins at site ``i`` (0 when none is on record)."""
        return 0.0 if self.effect is None else float(self.effect[i])

    def tried(self, i: int, min_own: int) -> bool:
        """Whether enough of this source's own twins for site ``i`` have been recorded."""
        return self.n_own is not None and self.effect is not None and self.n_own[i] >= min_own

    def se(self, i: int) -> float:
        return float(self.effect_se[i]) if self.effect_se is not None else float("nan")

    def predicts_pairs(self, i: int) -> bool:
        """Whether its predictions of the recorded pairs at site ``i`` beat chance (95% CI of r)."""
        return bool(self.transfer.r_low[i] > self.transfer.chance_r)  # False for NaN (too few pairs)


@dataclass(frozen=True)
class SiteChoice:
    source: str
    by: str  # "transfer" or "predictivity"
    reason: str


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3f}"


def choose_per_site(
    sources: list[SourceEvidence],
    *,
    min_pairs: int = 8,
    min_own: int = 4,
    keep_at_se: float = 1.0,
    explore_share: float = 0.5,
) -> list[SiteChoice]:
    """The source for each site, with a reason that quotes the evidence.

    Per site, in order:

    1. No source has ``min_pairs`` twin pairs on record: the best noise-ceiled predictivity.
    2. A source whose *own* twins for the site (at least ``min_own``) moved it in the intended
       direction by more than ``keep_at_se`` standard errors is kept (the best such effect).
    3. Otherwise, a source not yet tried at the site is tried (exploration): candidates by
       predictivity first, then the rest by transfer correlation; the reason says so. A source
       whose ceiled predictivity at the site is below ``explore_share`` of the best tried
       source's is not worth a day of twins: a model that cannot predict the site's responses
       to clean images knows nothing of its gradient (on an energy-model brain, ``pixels16`` at
       r 0.13 against ``vone_energy``'s 0.74 lost a day of twins on half the sites). A source
       with no predictivity of its own (the ensemble, the search) is tried only where its
       predictions of the recorded pairs beat chance (the 95% CI of its transfer r above 0):
       on an energy-model brain, whose gradient turns with the image, the search's one
       direction per site predicted nothing, and its twins found a fifth of what
       ``vone_energy``'s did. Nor is a source whose transfer is already decided against it:
       its predictions of the recorded pairs at the site correlate with what was observed
       clearly less than the best tried source's do (the upper end of its 95% CI below that
       source's r). Where the pairs carry no signal every r is near 0 with a wide CI, nothing
       is decided and exploration proceeds; where they do, a source that cannot predict them
       has shown on the held-out pairs that it does not follow the site as well (on a mixed
       linear population, ``vone_energy`` took a day of twins at sites where ``smooth16``'s own
       twins were merely noisy, and found a fifteenth of what they did).
    4. Everything has been tried and nothing clearly works: the best measured effect.

    Parameters
    ----------
    sources : list of SourceEvidence
        All with site arrays of one length; ``effect``/``effect_se``/``n_own`` describe each
        source's own twins (models.transfer.own_twin_effect).
    """
    if not sources:
        raise ValueError("no sources to choose from")
    n_sites = len(sources[0].predictivity)
    choices = []
    for i in range(n_sites):
        if not any(s.transfer.n[i] >= min_pairs for s in sources):
            choices.append(_by_predictivity(sources, i, min_pairs))
            continue
        tried = [s for s in sources if s.tried(i, min_own)]
        best = max(tried, key=lambda s: s.own_effect(i)) if tried else None
        if best is not None and best.own_effect(i) > keep_at_se * best.se(i):
            choices.append(SiteChoice(best.name, "own twins", _own_reason(best, i, tried)))
            continue
        known = [float(s.predictivity[i]) for s in tried if np.isfinite(s.predictivity[i])]
        floor = explore_share * max(known) if known else -np.inf
        untried = [
            s
            for s in sources
            if not s.tried(i, min_own) and _worth_trying(s, i, floor) and _undecided(s, best, i)
        ]
        if untried:
            pick = max(untried, key=lambda s: (np.nan_to_num(s.predictivity[i], nan=-2.0), _r(s, i)))
            why = (
                "exploring: its own twins have not been measured at this site yet; "
                + (
                    f"best so far {best.name} moved it {_fmt(best.own_effect(i))} +- {_fmt(best.se(i))} "
                    "per unit L2, not clearly above 0"
                    if best is not None
                    else "no source's own twins measured here yet"
                )
                + f"; transfer r over all pairs {_fmt(_r(pick, i))}"
            )
            choices.append(SiteChoice(pick.name, "exploration", why))
            continue
        assert best is not None
        decided = [s for s in sources if not s.tried(i, min_own) and not _undecided(s, best, i)]
        ruled_out = "".join(
            f"; {s.name} not tried: its transfer r {_fmt(s.transfer.r[i])} "
            f"[{_fmt(s.transfer.r_low[i])}, {_fmt(s.transfer.r_high[i])}] is below {best.name}'s "
            f"{_fmt(best.transfer.r[i])}"
            for s in decided
        )
        choices.append(
            SiteChoice(
                best.name,
                "best measured",
                _own_reason(best, i, tried) + " (nothing clearly works)" + ruled_out,
            )
        )
    return choices


def search_share_sites(
    choices: list[SiteChoice], search: SourceEvidence | None, *, min_pairs: int = 8
) -> list[bool]:
    """Per site, whether the across-day search gets its share of the site's twins.

    Adaptive allocation: only where the chosen source's own twins have not clearly moved the
    site (where they have, every slot exploits it), the search has ``min_pairs`` pairs, and its
    held-out predictions of those pairs beat chance (the 95% CI of its transfer r above 0). The
    search is one direction per site, fitted to the pairs: one that predicts none of them would
    move nothing (on an energy-model brain, whose gradient turns with the image, its twins found
    a fifth of what ``vone_energy``'s did while it took a third of the slots).
    """
    if search is None:
        return [False] * len(choices)
    return [
        bool(choice.by != "own twins" and search.transfer.n[i] >= min_pairs and search.predicts_pairs(i))
        for i, choice in enumerate(choices)
    ]


def _worth_trying(s: SourceEvidence, i: int, floor: float) -> bool:
    """Clean-image predictivity at least ``floor``; with none, transfer on the pairs above chance."""
    if np.isfinite(s.predictivity[i]):
        return bool(s.predictivity[i] >= floor)
    return s.predicts_pairs(i)


def _undecided(s: SourceEvidence, best: SourceEvidence | None, i: int) -> bool:
    """Whether the pairs leave ``s`` possibly as good a predictor at site ``i`` as ``best``.

    False only when both correlations are measured and the upper end of ``s``'s 95% CI lies
    below ``best``'s estimate: a decided question is not worth a day of twins.
    """
    if best is None or best is s:
        return True
    high, r_best = s.transfer.r_high[i], best.transfer.r[i]
    if not (np.isfinite(high) and np.isfinite(r_best)):
        return True
    return bool(high >= r_best)


def _r(s: SourceEvidence, i: int) -> float:
    return float(s.transfer.r[i]) if np.isfinite(s.transfer.r[i]) else -2.0


def _own_reason(best: SourceEvidence, i: int, tried: list[SourceEvidence]) -> str:
    t = best.transfer
    n_own = 0 if best.n_own is None else int(best.n_own[i])
    reason = (
        f"its own {n_own} twins moved the site {_fmt(best.own_effect(i))} +- {_fmt(best.se(i))} "
        f"per unit L2 in the intended direction (chance 0); transfer r over all pairs {_fmt(t.r[i])} "
        f"[{_fmt(t.r_low[i])}, {_fmt(t.r_high[i])}] (chance 0)"
    )
    others = [s for s in tried if s is not best]
    if others:
        reason += "; others: " + ", ".join(f"{s.name} {_fmt(s.own_effect(i))}" for s in others[:2])
    return reason


def _by_predictivity(sources: list[SourceEvidence], i: int, min_pairs: int) -> SiteChoice:
    pred = np.array([s.predictivity[i] for s in sources], dtype=np.float64)
    k = int(np.argmax(np.where(np.isfinite(pred), pred, -np.inf)))
    return SiteChoice(
        sources[k].name,
        "predictivity",
        f"fewer than {min_pairs} twin pairs on record: best ceiled predictivity {_fmt(pred[k])}",
    )
