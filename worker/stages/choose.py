"""Night stage 3: choose each site's source of twins by measured transfer, and plan the shards.

Sources are the night's candidates, their ensemble and the across-day search (models.selection);
the choice and its evidence are written on the site metrics of the chosen version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from itloop.errors import Conflict
from itloop.night_params import NightConfig
from jobs.context import JobContext
from jobs.registry import job
from models.transfer import own_twin_effect, shrink_to_population, site_transfer
from server.images.service import clean_pool
from server.images.tables import Direction
from server.modeling import service as modeling
from server.modeling.tables import ModelVersion
from server.recordings.queries import presentation_counts
from worker.candidates import ENSEMBLE, SEARCH
from worker.night import REFIT, SELECT
from worker.stages.data import site_pks as site_pks_of
from worker.stages.fit import night_config
from worker.stages.versions import load_artifact, nanmedian_or_none, transfer_fields


def _evidence(
    name: str,
    art: Any,
    site_ids: list[str],
    own: tuple[np.ndarray, np.ndarray, np.ndarray],
    changes: tuple[Any, Any] | None = None,
) -> Any:
    """A source's per-site evidence in ``site_ids`` order.

    ``own`` is the measured effect of the source's own twins (effect, stderr, n per site);
    ``changes`` is ``(predicted, observed)`` over pairs for a source with no artifact of its own
    (the ensemble), which has no clean-image predictivity either.
    """
    from models.selection import SourceEvidence

    cols = [art.site_ids.index(s) for s in site_ids]
    if changes is None:
        pred, obs = art.metrics.get("pair_pred_change"), art.metrics.get("pair_obs_change")
    else:
        pred, obs = changes
    if pred is None or obs is None or len(obs) == 0:
        empty = np.zeros((0, len(site_ids)))
        tr = site_transfer(empty, empty)
    else:
        tr = site_transfer(np.asarray(pred)[:, cols], np.asarray(obs)[:, cols])
    r_ceiled = np.asarray(art.metrics.get("r_ceiled", np.full(len(art.site_ids), np.nan)))[cols]
    if changes is not None:
        r_ceiled = np.full(len(site_ids), np.nan)
    effect, se, n_own = own
    return SourceEvidence(
        name=name, transfer=tr, predictivity=r_ceiled, effect=effect, effect_se=se, n_own=n_own
    )


def _own_twins(session: Any, ref: Any, site_ids: list[str]) -> Any:
    """For every twin pair on record: which candidate made it, for which site, pushing which way.

    Returns ``(observed (n_pairs, n_sites), l2, direction, target column, candidate names)`` from
    the reference artifact's pairs and the twins' lineage.
    """
    from server.images.tables import Image
    from server.lab.tables import Site

    child = [int(c) for c in ref.metrics.get("pair_child_id", [])]
    cols = [ref.site_ids.index(s) for s in site_ids]
    obs = np.asarray(ref.metrics.get("pair_obs_change", np.zeros((0, len(ref.site_ids)))))[:, cols]
    info: dict[int, tuple[Any, ...]] = {}
    for start in range(0, len(child), 5000):
        rows = session.execute(
            select(Image.id, Image.direction, Image.achieved_l2, Site.site_id, ModelVersion.candidate)
            .outerjoin(Site, Site.id == Image.site_pk)
            .outerjoin(ModelVersion, ModelVersion.id == Image.model_version_id)
            .where(Image.id.in_(child[start : start + 5000]))
        ).all()
        info.update({r[0]: r[1:] for r in rows})
    col_of = {sid: i for i, sid in enumerate(site_ids)}
    unknown = (None, None, None, None)  # a pair whose twin has no lineage row counts for nobody
    rows_of = [info.get(c, unknown) for c in child]
    direction = np.array(
        [Direction(r[0]).sign if r[0] in Direction.__members__ else 0.0 for r in rows_of], dtype=float
    )
    l2 = np.array([np.nan if r[1] is None else float(r[1]) for r in rows_of])
    target = np.array([col_of.get(r[2], -1) for r in rows_of])
    made_by = np.array([r[3] or "" for r in rows_of], dtype=object)
    return obs, l2, direction, target, made_by


def _ensemble_changes(arts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean predicted change of all members, and the observed change, over the pairs all of them hold out."""
    rows: list[dict[tuple[int, int], int]] = []
    for a in arts.values():
        p, c = a.metrics.get("pair_parent_id"), a.metrics.get("pair_child_id")
        if p is None or c is None or len(p) == 0:
            return None
        rows.append({(int(x), int(y)): k for k, (x, y) in enumerate(zip(p, c, strict=True))})
    common = sorted(set.intersection(*(set(r) for r in rows)))
    if not common:
        return None
    preds = [
        np.asarray(a.metrics["pair_pred_change"])[[r[k] for k in common]]
        for a, r in zip(arts.values(), rows, strict=True)
    ]
    first = next(iter(arts.values()))
    obs = np.asarray(first.metrics["pair_obs_change"])[[rows[0][k] for k in common]]
    return np.mean(preds, axis=0), obs


def _record_ensemble(
    ctx: JobContext, session: Any, members: list[str], evidence: Any, site_ids: list[str]
) -> Any:
    """The ensemble as a model version of its own, so lineage and analysis can name it."""
    version = f"night{ctx.params['night_id']}-{ENSEMBLE}"
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if existing is not None:
        return existing
    key = f"models/{version}.json"
    ctx.store.put(key, json.dumps({"members": members}).encode())
    tr = evidence.transfer
    return modeling.record_model_version(
        session=session,
        version=version,
        candidate=ENSEMBLE,
        backbone=ENSEMBLE,
        checkpoint_sha256=None,
        layer="",
        pool="",
        artifact_key=key,
        trained_on={"night": ctx.params["night_id"], "members": members},
        metrics={"members": members, "median_transfer_r": nanmedian_or_none(tr.r)},
        score=None,
        site_metrics=[{"site_id": sid, **transfer_fields(tr, i)} for i, sid in enumerate(site_ids)],
    )


def plan_shards(
    eligible: list[str],
    source_of: dict[str, str],
    search: str | None,
    cfg: NightConfig,
    clean_ids: list[int],
    search_ready: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Synthesis shards: one model version each, a few sites, and which image slots they make.

    Each site's ``clean_per_site`` parent images are slots ``0..k-1``. With a fitted search, the
    first ``round(search_share * k)`` slots (at least one when ``k >= 2``) of every site that has
    enough pairs are made along the search's direction, the rest (and the site's targeted and
    random twins) by the site's chosen source; a site whose chosen source is the search gets all
    its slots from it.
    """
    k = cfg.clean_per_site
    n_search = round(cfg.search_share * k) if search else 0
    if search and cfg.search_share > 0 and k >= 2:
        n_search = min(max(n_search, 1), k)
    jobs: dict[tuple[str, int, int, bool], list[str]] = {}
    for sid in eligible:
        source = source_of[sid]
        if search and source != search and n_search and sid in search_ready:
            jobs.setdefault((search, 0, n_search, n_search == k), []).append(sid)
            if n_search < k:
                jobs.setdefault((source, n_search, k, True), []).append(sid)
        else:
            jobs.setdefault((source, 0, k, True), []).append(sid)
    shards = []
    for (version, lo, hi, extras), sites in sorted(jobs.items()):
        for i in range(0, len(sites), cfg.sites_per_shard):
            shards.append(
                {
                    "model_version": version,
                    "sites": sites[i : i + cfg.sites_per_shard],
                    "clean_image_ids": clean_ids,
                    "slots": [lo, hi],
                    "extras": extras,
                }
            )
    return shards


@dataclass
class Sources:
    """The night's fitted sources: artifacts by version, the search's version, the surrogates proper."""

    arts: dict[str, Any]
    search: str | None
    members: list[str]
    candidate_of: dict[str, str]
    skipped: list[str]

    @property
    def site_ids(self) -> list[str]:
        return list(self.arts[self.members[0]].site_ids)


def _sources(ctx: JobContext) -> Sources:
    """Every refit that produced a version (a skipped one is noted), loaded."""
    everything = ctx.results_of(REFIT)
    results = [r for r in everything if r.get("model_version")]
    if not results:
        raise Conflict("no candidate model was fitted")
    skipped = [f"{r.get('candidate')}: {r['skipped']}" for r in everything if r.get("skipped")]
    arts = {r["model_version"]: load_artifact(ctx, r["model_version"]) for r in results}
    search = next((r["model_version"] for r in results if r.get("candidate") == SEARCH), None)
    members = [v for v in arts if v != search]  # surrogates proper: they predict clean responses
    if not members:
        raise Conflict("no candidate surrogate was fitted (the search alone cannot start a night)")
    candidate_of = {r["model_version"]: r.get("candidate", "") for r in results}
    return Sources(arts, search, members, candidate_of, skipped)


def _all_evidence(ctx: JobContext, cfg: NightConfig, src: Sources) -> list[Any]:
    """Each source's per-site evidence (the ensemble's last, when offered)."""
    site_ids = src.site_ids
    ref = max((src.arts[v] for v in src.members), key=lambda a: len(a.metrics.get("pair_child_id", [])))
    with ctx.session() as session:
        obs, l2, direction, target, made_by = _own_twins(session, ref, site_ids)

    def own(candidate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        effect, se, n = own_twin_effect(obs, l2, direction, target, made_by == candidate)
        mean, sd = shrink_to_population(effect, se)  # one day per site is noisy: borrow the sites'
        return mean, sd, n

    evidence = [_evidence(v, a, site_ids, own(src.candidate_of[v])) for v, a in src.arts.items()]
    ens_arts = {v: src.arts[v] for v in src.members}
    ens_changes = _ensemble_changes(ens_arts) if cfg.ensemble and len(src.members) > 1 else None
    if ens_changes is not None:
        first = src.arts[src.members[0]]
        evidence.append(_evidence(ENSEMBLE, first, site_ids, own(ENSEMBLE), ens_changes[:2]))
    return evidence


def _mark_site_choices(
    session: Any, version_of: dict[str, str], site_ids: list[str], choices: list[Any]
) -> None:
    """The per-site choice and its evidence, on the chosen version's site metric rows."""
    from server.modeling.tables import SiteMetric

    ids = {v: modeling.get(session=session, version=v).id for v in version_of.values()}
    site_pk = site_pks_of(session, site_ids)
    for sid, choice in zip(site_ids, choices, strict=True):
        row = session.scalar(
            select(SiteMetric).where(
                SiteMetric.model_version_id == ids[version_of[choice.source]],
                SiteMetric.site_pk == site_pk[sid],
            )
        )
        if row is not None:
            row.chosen_for_site = True
            row.choice_reason = f"{choice.by}: {choice.reason}"


def _record_choice(
    ctx: JobContext, session: Any, src: Sources, evidence: list[Any], choices: list[Any]
) -> tuple[Any, dict[str, str]]:
    """Choose the night's headline version, note why, mark each site's source; (version, names)."""
    counts: dict[str, int] = {}
    for c in choices:
        counts[c.source] = counts.get(c.source, 0) + 1
    version_of = {v: v for v in src.arts}
    if any(c.source == ENSEMBLE for c in choices):
        version_of[ENSEMBLE] = _record_ensemble(ctx, session, src.members, evidence[-1], src.site_ids).version
    top = max(counts, key=lambda k: (counts[k], k not in (ENSEMBLE, src.search)))
    summary = ", ".join(f"{version_of[k]} for {n} site(s)" for k, n in sorted(counts.items()))
    mv = modeling.get(session=session, version=version_of[top])
    by_evidence = sum(c.by != "predictivity" for c in choices)
    modeling.choose(
        session=session,
        model_version=mv,
        reason=(
            f"chosen per site: {summary}; {by_evidence} site(s) by their own recorded twins or "
            f"exploration, {len(choices) - by_evidence} by ceiled predictivity (no twins yet)"
        ),
    )
    night_row = _night(session, ctx.params["night_id"])
    night_row.model_version_id = mv.id
    if src.skipped:  # e.g. a surrogate that failed to train: the others stood in, and the note says so
        note = "; ".join(src.skipped)
        night_row.note = f"{night_row.note}; {note}" if night_row.note else note
    _mark_site_choices(session, version_of, src.site_ids, choices)
    return mv, version_of


@job(SELECT, timeout_s=1800)
def select_model(ctx: JobContext) -> dict[str, Any]:
    """Choose each site's source by measured transfer (predictivity before twins) and plan the shards."""
    from models.selection import choose_per_site, search_share_sites

    cfg = night_config(ctx)
    src = _sources(ctx)
    site_ids = src.site_ids
    evidence = _all_evidence(ctx, cfg, src)
    choices = choose_per_site(evidence, min_pairs=cfg.min_transfer_pairs)
    with ctx.session() as session:
        mv, version_of = _record_choice(ctx, session, src, evidence, choices)
        gate_rows = modeling.site_metrics(
            session=session, mv=modeling.get(session=session, version=src.members[0])
        )
        clean, _ = clean_pool(session)
        clean_ids = parent_pool(session, ctx.params["session_pk"], [im.id for im in clean], cfg)
        chosen = {"model_version": mv.version, "model_version_id": mv.id}
    gated = {m["site_id"]: m.get("gate_reason") or "gated" for m in gate_rows if m.get("gated")}
    eligible = [sid for sid in site_ids if sid not in gated]
    if not clean_ids:
        raise Conflict("no clean image set is registered; nothing to perturb")
    source_of = {sid: version_of[c.source] for sid, c in zip(site_ids, choices, strict=True)}
    search_ev = next((e for e in evidence if e.name == src.search), None)
    share = search_share_sites(choices, search_ev, min_pairs=cfg.min_transfer_pairs)
    ready = {sid for sid, takes in zip(site_ids, share, strict=True) if takes}
    return {
        **chosen,
        "parents": f"{len(clean_ids)} clean image(s) ({cfg.parents})",
        "shards": plan_shards(eligible, source_of, src.search, cfg, clean_ids, search_ready=ready),
        "gated": gated,
        "eligible": eligible,
        "site_sources": {
            sid: {"source": source_of[sid], "by": c.by} for sid, c in zip(site_ids, choices, strict=True)
        },
    }


def parent_pool(session: Any, session_pk: int, clean_ids: list[int], cfg: NightConfig) -> list[int]:
    """The clean images (set order) the night's twins may start from.

    With ``parents="recorded"``, only images the subject has already been recorded viewing: each
    surrogate's per-site fit is anchored there, so its gradient is best at those images, and the
    parent's own clean response is already measured. Images never shown reach the monkey first as
    fresh clean images (``fresh_clean``) and become parents on a later night. While fewer than
    ``clean_per_site`` images are recorded, the whole set is used, so no site gets fewer twins.
    """
    if cfg.parents == "any":
        return clean_ids
    seen = presentation_counts(session, session_pk, clean_ids)
    recorded = [i for i in clean_ids if seen.get(i, 0) > 0]
    return recorded if len(recorded) >= cfg.clean_per_site else clean_ids


def _night(session: Any, night_id: int) -> Any:
    from server.jobs.tables import Night

    return session.get(Night, night_id)
