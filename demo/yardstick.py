"""How far the loop got on a day, judged against the brain's white-box truth.

Per day and epsilon, from the public API (lineage, model versions, sensitivity analyses) and the
virtual brain itself, as an outside client would:

* **found fraction** of the shipped guided twins (kind ``perturbed``): the brain's true change
  ``r_i(twin) - r_i(parent)`` at the twin's target site ``i`` in the twin's direction (up or
  down; a change the wrong way counts 0), divided by the white-box value in that direction at
  the same parent, site and epsilon. 1 means the loop found the brain's own best twin for that
  goal. The white-box value is the family's exact maximum, or for the attack-based families the
  best of a strong attack on the simulator; a twin that beats the attack raises the reference to
  its own change (counted in ``whitebox_beaten``), so the fraction never exceeds 1. Beside it,
  ``found_either_*``: ``|change|`` over the site's worst case in either direction,
  ``max(up, down)`` (the found fraction reported before both were), which undercounts every down twin
  on a brain whose rates can rise far more than they can fall (see :func:`found_fractions`);
* the same for random-direction twins (kind ``random``), judged in the direction they moved:
  the floor;
* **Spearman** over sites between the sign-corrected estimate (``GET /analysis/sensitivity``,
  source ``it``) and the site's white-box sensitivity at the parents its twins used; to date
  (source ``it_to_date``) against the white-box sensitivity at every parent used so far;
* why a Spearman is low, split in two: ``spearman_true_effect`` ranks sites by the brain's true
  (noise-free) change under the shipped twins, so it is what perfect recordings of these twins
  would reach (the targeting ceiling: sites whose twins found less of their worst case fall out
  of order); ``spearman_estimate_vs_effect`` compares the estimate with that true change, so it
  is what recording noise leaves of the ranking;
* the found fraction **by source** (each candidate, the ensemble, the across-day search), so a
  day's median can be read as the mix of sources it is;
* per site, which **surrogate** made its twins (lineage -> ``GET /model-versions/{version}``:
  candidate) and that version's measured transfer on the site (``transfer_sign``, ``transfer_r``).

Everything is normalised by the same per-site spread, so found fractions do not depend on it.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from scipy.stats import spearmanr

from demo.truth import sensitivity_records

__all__ = ["History", "evaluate_yardstick", "found_fractions", "split_version"]

_Key = tuple[str, float]
_DIRECTION = {"up": 1, "down": -1}


@dataclass
class History:
    """What the yardstick saw on earlier days, per (site id, epsilon), to judge the to-date figures.

    ``whitebox``: normalised white-box value by parent hash; ``effect``: normalised true change
    by twin hash (the estimate to date is unbiased for the mean of the latter).
    """

    whitebox: dict[_Key, dict[str, float]] = field(default_factory=dict)
    effect: dict[_Key, dict[str, float]] = field(default_factory=dict)

    def add(self, key: _Key, whitebox: dict[str, float], effect: dict[str, float]) -> tuple[float, float]:
        """Record a day's values; the means to date of the white-box value and the true change."""
        seen_wb = self.whitebox.setdefault(key, {})
        seen_wb.update(whitebox)
        seen_effect = self.effect.setdefault(key, {})
        seen_effect.update(effect)
        return float(np.mean(list(seen_wb.values()))), float(np.mean(list(seen_effect.values())))


def found_fractions(
    brain: Any,
    parents: np.ndarray,
    twins: np.ndarray,
    sites: np.ndarray,
    eps: np.ndarray,
    directions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Found fraction of each twin at its target site, in its own direction and of the worst case.

    A twin made to raise a site's rate is judged against the white-box *up* value, one made to
    lower it against the *down* value: that is what a white-box attack with the same goal at the
    same parent, site and epsilon reaches. On a brain whose rates saturate or cannot fall far
    (an energy model near its floor) the down value is a small part of the up one (measured on
    ``v1fine``: 0.34 of it at eps 0.5, 0.07 at eps 2), so judging a down twin against
    ``max(up, down)`` would call a twin that found 60% of the largest possible decrease a 4% one.
    A twin that moved the wrong way found nothing of its goal. Twins without a direction (random
    ones) are judged in the direction they moved. The share of the site's worst case in either
    direction is kept beside it (``fraction_either``).

    Parameters
    ----------
    brain : models.simulator.Brain
    parents, twins : ndarray of shape (n, 3, H, W)
        Clean parents and their twins, uint8 or float in [0, 1].
    sites : ndarray of shape (n,), int
        Target site (column) of each twin.
    eps : ndarray of shape (n,)
        The radius each twin was made for.
    directions : ndarray of shape (n,), optional
        +1 (made to raise the rate), -1 (to lower it) or 0 (no direction); all 0 when omitted.

    Returns
    -------
    dict of ndarray of shape (n,)
        ``change`` (true ``|r(twin) - r(parent)|``, spikes/s); ``fraction`` (the change in the
        twin's direction over the white-box value in that direction, ``whitebox_direction``);
        ``attack`` (the family's white-box ``max(up, down)``), ``whitebox`` (``max(attack,
        change)``) and ``fraction_either`` (``change / whitebox``); ``beaten`` (bool: the twin
        moved its site further than the attack did in its direction, which then raises that
        reference to the twin's change). Fractions are 0 where the reference is 0.
    """
    sites = np.asarray(sites, dtype=np.int64)
    n = len(sites)
    rows = np.arange(n)
    directions = np.zeros(n) if directions is None else np.asarray(directions, dtype=np.float64)
    r0 = brain.rates(parents)[rows, sites]
    r1 = brain.rates(twins)[rows, sites]
    signed = r1 - r0
    change = np.abs(signed)
    truth = brain.true_sensitivity_cases(parents, sites, np.asarray(eps, dtype=np.float64))
    goal = np.where(directions != 0, directions, np.sign(signed))  # random twins: where they moved
    along = np.maximum(goal * signed, 0.0)
    attack_direction = np.where(goal < 0, truth.down, truth.up)
    # A feasible twin is a lower bound on the maximum too; a tiny tolerance absorbs rounding.
    beaten = along > attack_direction * (1 + 1e-9) + 1e-12
    whitebox_direction = np.maximum(attack_direction, along)
    attack = truth.max
    whitebox = np.maximum(attack, change)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(whitebox_direction > 0, along / whitebox_direction, 0.0)
        either = np.where(whitebox > 0, change / whitebox, 0.0)
    return {
        "change": change,
        "fraction": fraction,
        "whitebox_direction": whitebox_direction,
        "attack": attack,
        "whitebox": whitebox,
        "fraction_either": either,
        "beaten": beaten,
    }


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"median": None, "mean": None, "n": 0}
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "mean": float(np.mean(a)), "n": int(a.size)}


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)


def _spearman_across_epsilons(by_eps: list[dict[str, Any]], suffix: str) -> float | None:
    """Spearman of one figure per site that pools every epsilon (a report-only view).

    A site's change grows about linearly with epsilon at these radii, so its estimates at all
    epsilons are pooled into one slope through the origin, ``sum_e e * s_e / sum_e e^2``, and the
    white-box values likewise. Noise is about the same at every epsilon while the signal grows
    with it, so the pooled slope is dominated by the largest radii: this ranks sites on what
    the day's trials can resolve, where the smallest epsilon's figures alone cannot.
    """
    eps = np.array([r["epsilon"] for r in by_eps], dtype=float)

    def slope(key: str) -> np.ndarray:
        values = np.array([[np.nan if v is None else v for v in r[key]] for r in by_eps], dtype=float)
        ok = np.isfinite(values)  # (n_eps, n_sites)
        num = np.where(ok, values * eps[:, None], 0.0).sum(axis=0)
        den = np.where(ok, eps[:, None] ** 2, 0.0).sum(axis=0)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    if not by_eps:
        return None
    return _spearman(slope(f"sign_corrected{suffix}_per_site"), slope(f"whitebox{suffix}_per_site"))


def _listed(values: np.ndarray) -> list[float | None]:
    """Plain JSON: NaN (no twins at a site) becomes None."""
    return [None if not np.isfinite(v) else float(v) for v in values]


def _surrogates(viewer: httpx.Client, versions: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per site: the model version that made its guided twins, its candidate and its measured transfer."""
    details: dict[str, dict[str, Any] | None] = {}
    out = {}
    for sid, version in versions.items():
        if version is None:
            out[sid] = {"model_version": None, "candidate": None, "transfer_sign": None, "transfer_r": None}
            continue
        if version not in details:
            r = viewer.get(f"/model-versions/{version}")
            details[version] = r.json() if r.status_code == 200 else None
        mv = details[version] or {}
        metric = next((m for m in mv.get("site_metrics", []) if m.get("site_id") == sid), {})
        out[sid] = {
            "model_version": version,
            "candidate": mv.get("candidate"),
            "transfer_sign": metric.get("transfer_sign"),
            "transfer_r": metric.get("transfer_r"),
        }
    return out


def evaluate_yardstick(
    viewer: httpx.Client,
    brain: Any,
    lineage: dict[str, dict[str, Any]],
    pixels: dict[str, np.ndarray],
    site_ids: list[str],
    day: int,
    history: History | None = None,
) -> dict[str, Any]:
    """The day's yardstick (see the module doc) from the day's images and their lineage.

    Parameters
    ----------
    viewer : httpx.Client
        A viewer's client on ``/api/v1``.
    brain : models.simulator.Brain
    lineage : dict
        ``GET /images/{sha}/lineage`` of every image shown that day, by hash.
    pixels : dict
        The shown images' pixels, (3, H, W) uint8, by hash.
    site_ids : list of str
        Site ids in the brain's column order.
    day : int
    history : History, optional
        Earlier days' white-box values and true changes, updated in place with today's; the
        to-date figures compare against their means. Without it they use today's twins only.
    """
    col = {sid: i for i, sid in enumerate(site_ids)}
    clean = [s for s, lin in lineage.items() if lin["kind"] not in ("perturbed", "targeted", "random")]
    sigma = brain.rates(np.stack([pixels[s] for s in clean])).std(axis=0, ddof=1) if len(clean) > 1 else None
    out: dict[str, Any] = {
        "day": day,
        "family": getattr(brain, "family", None),
        "natural_share": getattr(brain, "natural_share", None),
        "whitebox": "exact" if getattr(brain, "exact", True) else "attack",
    }
    twins = {
        kind: sorted(
            s
            for s, lin in lineage.items()
            if lin["kind"] == kind
            and lin.get("site_id") in col
            and lin.get("epsilon") is not None
            and lin.get("parent_sha256") in pixels
        )
        for kind in ("perturbed", "random")
    }
    if not twins["perturbed"]:
        return {**out, "epsilons": [], "by_epsilon": [], "sites": []}
    # One white-box call for every (parent, site, epsilon) of the day: for an attack-based family
    # the brain caches the answers, and one batch per site is far cheaper than several.
    every = twins["perturbed"] + twins["random"]
    brain.true_sensitivity_cases(
        np.stack([pixels[lineage[s]["parent_sha256"]] for s in every]),
        np.array([col[lineage[s]["site_id"]] for s in every]),
        np.array([float(lineage[s]["epsilon"]) for s in every]),
    )
    res: dict[str, dict[str, np.ndarray]] = {}
    for kind, shas in twins.items():
        if not shas:
            continue
        res[kind] = found_fractions(
            brain,
            np.stack([pixels[lineage[s]["parent_sha256"]] for s in shas]),
            np.stack([pixels[s] for s in shas]),
            np.array([col[lineage[s]["site_id"]] for s in shas]),
            np.array([float(lineage[s]["epsilon"]) for s in shas]),
            np.array([_DIRECTION.get(lineage[s].get("direction"), 0) for s in shas]),
        )
    epsilons = sorted({float(lineage[s]["epsilon"]) for s in twins["perturbed"]})
    est, est_to_date = (
        {
            (rec["site_id"], float(rec["epsilon"])): rec["value"]
            for rec in sensitivity_records(viewer, day=day, estimator="sign_corrected", source=source)
            if rec.get("site_id") in col and rec.get("epsilon") is not None and rec.get("value") is not None
        }
        for source in ("it", "it_to_date")
    )
    g = res["perturbed"]
    by_eps = []
    site_wb: dict[str, list[float]] = defaultdict(list)
    for e in epsilons:
        row: dict[str, Any] = {"epsilon": e}
        for kind, label in (("perturbed", "found"), ("random", "random")):
            shas = twins[kind]
            pick = [k for k, s in enumerate(shas) if float(lineage[s]["epsilon"]) == e]
            for key, suffix in (("fraction", ""), ("fraction_either", "_either")):
                stats = _stats([float(res[kind][key][k]) for k in pick]) if kind in res else _stats([])
                row.update(
                    {f"{label}{suffix}_median": stats["median"], f"{label}{suffix}_mean": stats["mean"]}
                )
            row[f"n_{label}"] = stats["n"]
        fm, rm = row["found_mean"], row["random_mean"]
        row["shipped_over_random"] = fm / rm if fm is not None and rm else None
        wb, wb_to_date, effect, effect_to_date, sc, sc_to_date = (
            np.full(len(site_ids), np.nan) for _ in range(6)
        )
        for sid, i in col.items():
            pick = [
                k
                for k, s in enumerate(twins["perturbed"])
                if lineage[s]["site_id"] == sid and float(lineage[s]["epsilon"]) == e
            ]
            if pick and sigma is not None and sigma[i] > 0:
                # One white-box value per distinct parent (its up and down twins share it).
                per_parent = {
                    lineage[twins["perturbed"][k]]["parent_sha256"]: float(g["whitebox"][k]) / sigma[i]
                    for k in pick
                }
                per_twin = {twins["perturbed"][k]: float(g["change"][k]) / sigma[i] for k in pick}
                wb[i] = float(np.mean(list(per_parent.values())))
                effect[i] = float(np.mean(list(per_twin.values())))
                site_wb[sid].append(wb[i])
                wb_to_date[i], effect_to_date[i] = (
                    (wb[i], effect[i]) if history is None else history.add((sid, e), per_parent, per_twin)
                )
            sc[i] = est.get((sid, e), np.nan)
            sc_to_date[i] = est_to_date.get((sid, e), np.nan)
        row["spearman"] = _spearman(sc, wb)
        row["spearman_to_date"] = _spearman(sc_to_date, wb_to_date)
        row["spearman_true_effect"] = _spearman(effect, wb)
        row["spearman_estimate_vs_effect"] = _spearman(sc, effect)
        row["spearman_to_date_true_effect"] = _spearman(effect_to_date, wb_to_date)
        row["spearman_to_date_estimate_vs_effect"] = _spearman(sc_to_date, effect_to_date)
        row["whitebox_per_site"] = _listed(wb)
        row["true_effect_per_site"] = _listed(effect)
        row["sign_corrected_per_site"] = _listed(sc)
        row["whitebox_to_date_per_site"] = _listed(wb_to_date)
        row["sign_corrected_to_date_per_site"] = _listed(sc_to_date)
        by_eps.append(row)

    made_by: dict[str, Counter] = defaultdict(Counter)
    site_found: dict[str, list[float]] = defaultdict(list)
    source_found: dict[str, list[float]] = defaultdict(list)
    for k, s in enumerate(twins["perturbed"]):
        made_by[lineage[s]["site_id"]][lineage[s].get("model_version")] += 1
        site_found[lineage[s]["site_id"]].append(float(g["fraction"][k]))
        source_found[_source_name(lineage[s].get("model_version"))].append(float(g["fraction"][k]))
    surrogate = _surrogates(viewer, {sid: made_by[sid].most_common(1)[0][0] for sid in made_by})
    sites = [
        {"site_id": sid, **surrogate[sid], "found_median": float(np.median(site_found[sid]))}
        for sid in site_ids
        if sid in surrogate
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overall: dict[str, Any] = {}
        for key, suffix in (("fraction", ""), ("fraction_either", "_either")):
            overall[f"found{suffix}_median"] = float(np.median(g[key]))
            overall[f"found{suffix}_mean"] = float(np.mean(g[key]))
            rnd = res["random"][key] if "random" in res else None
            overall[f"random{suffix}_median"] = float(np.median(rnd)) if rnd is not None else None
            overall[f"random{suffix}_mean"] = float(np.mean(rnd)) if rnd is not None else None
    rm = overall["random_mean"]
    overall["shipped_over_random"] = overall["found_mean"] / rm if rm else None
    rm = overall["random_either_mean"]
    overall["shipped_over_random_either"] = overall["found_either_mean"] / rm if rm else None
    rhos = [r["spearman"] for r in by_eps if r["spearman"] is not None]
    overall["spearman_mean"] = float(np.mean(rhos)) if rhos else None
    overall["spearman_across_epsilons"] = _spearman_across_epsilons(by_eps, "")
    overall["spearman_across_epsilons_to_date"] = _spearman_across_epsilons(by_eps, "_to_date")
    for key in (
        "spearman_to_date",
        "spearman_true_effect",
        "spearman_estimate_vs_effect",
        "spearman_to_date_true_effect",
        "spearman_to_date_estimate_vs_effect",
    ):
        rhos = [r[key] for r in by_eps if r[key] is not None]
        overall[f"{key}_mean"] = float(np.mean(rhos)) if rhos else None
    return {
        **out,
        **overall,
        "epsilons": epsilons,
        "twins": len(twins["perturbed"]),
        "random_twins": len(twins["random"]),
        "whitebox_beaten": int(sum(int(np.sum(r["beaten"])) for r in res.values())),
        "by_epsilon": by_eps,
        "by_source": {name: _stats(values) for name, values in sorted(source_found.items())},
        "sites": sites,
    }


def split_version(version: str) -> tuple[int | None, str]:
    """A night's version name in its parts: ``night3-vone_energy`` -> ``(3, "vone_energy")``.

    ``(None, version)`` for a name that is not ``night<N>-...``.
    """
    head, _, rest = version.partition("-")
    return (int(head[5:]), rest) if head.startswith("night") and head[5:].isdigit() else (None, version)


def _source_name(version: str | None) -> str:
    """A twin's source without its night: ``night3-vone_energy`` -> ``vone_energy``.

    The day's found fraction split by source says which of the night's sources (each
    candidate, the ensemble, the across-day search) made the twins that moved their sites.
    """
    if not version:
        return "unknown"
    night, rest = split_version(version)
    return rest if night is not None and rest else version
