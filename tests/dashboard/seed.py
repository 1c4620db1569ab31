"""A small but realistic lab in the database, for the dashboard's browser tests.

The lab inventory (one subject, one array, four sites, one rig) comes from the shared
:func:`tests.factories.add_lab`; the rest is written straight through the ORM tables so that
the dashboard tests do not depend on the worker: two recording days, two model
versions (the second chosen, with per-site screening metrics), sensitivity results for
IT and for both models over three epsilons with bootstrap intervals, a published batch
of real PNG images with lineage, and two nights, the last one with a failed job.

The expectations the tests check (how many traces, which sites) live in :data:`EXPECT`
so that a change to the seed and to the assertions stay in one place.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from itloop.storage import ObjectStore, image_key, sha256_hex
from server.analysis.tables import AnalysisResult
from server.auth import service as auth_service
from server.batches.tables import Batch, BatchImage, BatchState, SequenceItem
from server.images.tables import Image
from server.jobs.tables import Job, JobState, Night
from server.lab.tables import Site
from server.modeling.tables import ModelVersion, SiteMetric
from server.recordings.tables import Presentation, RecordingSession, Response
from tests.factories import add_lab

SITES = ("m1-A-s01", "m1-A-s02", "m1-A-s03", "m1-A-s04")
EPSILONS = (1.0, 3.0, 10.0)
DAYS = (1, 2)
# Versions are named per night; night 2 refits resnet50 beside the robust network it chose, so the
# pages must join "mv-night1-resnet50" and "mv-night2-resnet50" into one resnet50 line.
VERSIONS = ("mv-night1-resnet50", "mv-night2-robust", "mv-night2-resnet50")
NIGHT_OF = {VERSIONS[0]: 1, VERSIONS[1]: 2, VERSIONS[2]: 2}
CANDIDATE_OF = {VERSIONS[0]: "resnet50", VERSIONS[1]: "resnet50_l2_eps3", VERSIONS[2]: "resnet50"}
IT_ESTIMATORS = (
    "plain",
    "sign_corrected",
    "noise_floor",
    "plain_noise_corrected",
    "random_pair",
    "model_free_plain",
    "model_free_sign_corrected",
)
# IT pooled over every day so far (source "it_to_date"); the pages draw only the first two.
TO_DATE_ESTIMATORS = ("sign_corrected", "plain_noise_corrected", "plain")
TO_DATE_SHOWN = 2
# Unbiased estimators can read below zero: at the smallest epsilon on day 1 the population's
# sign-corrected and noise-corrected figures are negative, and a page must still draw them.
NEGATIVE = {("sign_corrected", 1): (-0.02, -0.07, 0.03), ("plain_noise_corrected", 1): (-0.015, -0.06, 0.04)}
BATCH_ID = "rig-1-day2"
FAILED_JOB_ERROR = "synthesis ran out of GPU memory on site m1-A-s03 (CUDA out of memory)"
# Sensitivity of a standard network is about ten times IT's; an adversarially trained one is close to IT.
OBSERVED_HZ_PER_EPS = 4.0
MODEL_GAIN = {VERSIONS[0]: 10.0, VERSIONS[1]: 1.3, VERSIONS[2]: 9.0}


@dataclass
class Seeded:
    """What the seed made, for the tests to check the pages against."""

    viewer_token: str
    rig_token: str
    batch_id: str = BATCH_ID
    sites: tuple[str, ...] = SITES
    versions: tuple[str, ...] = VERSIONS
    chosen: str = VERSIONS[1]
    epsilons: tuple[float, ...] = EPSILONS
    days: tuple[int, ...] = DAYS
    perturbed: dict[tuple[str, float], dict[str, str]] = field(default_factory=dict)
    clean: list[str] = field(default_factory=list)


def _png(rng: np.random.Generator, base: np.ndarray | None = None, shift: float = 0.0) -> bytes:
    """A 64x64 RGB PNG: smooth blobs for a clean image, or ``base`` plus a small perturbation."""
    if base is None:
        y, x = np.mgrid[0:64, 0:64] / 63.0
        img = np.zeros((64, 64, 3))
        for c in range(3):
            cx, cy, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            img[..., c] = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    else:
        img = base + shift * rng.standard_normal(base.shape)
    pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"), dtype=float) / 255.0


def _image(session: Session, store: ObjectStore, data: bytes, **lineage: Any) -> Image:
    sha = sha256_hex(data)
    store.put(image_key(sha), data)
    image = Image(sha256=sha, width=64, height=64, n_bytes=len(data), **lineage)
    session.add(image)
    session.flush()
    return image


def _ci(value: float, rel: float) -> tuple[float, float]:
    return value * (1 - rel), value * (1 + rel)


def _result(
    session: Session,
    where: dict[str, Any],
    estimator: str,
    eps: float | None,
    value: float,
    rel: float,
    mv: ModelVersion | None = None,
    interval: tuple[float, float] | None = None,
    source: str = "it",
) -> None:
    """One analysis row with a symmetric relative interval (``rel`` of the value each side)."""
    lo, hi = interval or _ci(value, rel)
    session.add(
        AnalysisResult(
            **where,
            model_version_id=mv.id if mv else None,
            source=f"model:{mv.version}" if mv else source,
            epsilon=eps,
            estimator=estimator,
            value=value,
            ci_low=lo,
            ci_high=hi,
            n_pairs=24 * where["n_sites"],
        )
    )


def _record(
    session: Session, rec: RecordingSession, members: list[tuple[Image, str]], sites: list[Site]
) -> None:
    """Three presentations of every batch image with responses of ``sites`` in the 70-170 ms window.

    A perturbed image moves the rate by ``OBSERVED_HZ_PER_EPS * eps`` in its direction (the
    three repeats jitter by -1, 0, +1 Hz around it), so the observed change is known exactly.
    """
    onset = 1.0
    for rep in range(3):
        for n, (img, _) in enumerate(members):
            pres = Presentation(
                session_pk=rec.id, event_id=f"{rec.session_id}:{rep}:{n}", image_id=img.id, onset_s=onset
            )
            session.add(pres)
            session.flush()
            onset += 0.2
            sign = {"up": 1.0, "down": -1.0}.get(img.direction or "", 0.0)
            for k, site in enumerate(sites):
                rate = 20.0 + 5.0 * k + sign * OBSERVED_HZ_PER_EPS * (img.epsilon or 0.0) + (rep - 1)
                session.add(
                    Response(
                        session_pk=rec.id,
                        presentation_id=pres.id,
                        site_pk=site.id,
                        window_start_ms=70.0,
                        window_end_ms=170.0,
                        count=round(rate * 0.1),
                        rate_hz=rate,
                    )
                )
    session.flush()


def seed(session: Session, store: ObjectStore) -> Seeded:
    """Fill an empty, migrated database; the caller commits."""
    rng = np.random.default_rng(20220602)
    t0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)

    viewer = auth_service.create_user(session=session, name="dash-viewer", role="viewer")
    token = auth_service.create_token(session=session, user=viewer, name="dashboard tests")
    rig_user = auth_service.create_user(session=session, name="dash-rig", role="rig")
    rig_token = auth_service.create_token(session=session, user=rig_user, name="a rig may not read models")

    lab = add_lab(
        session,
        subject="m1",
        subject_notes="chronic Utah arrays, left IT",
        hemisphere="L",
        site_ids=SITES,
        electrodes=[f"e{i + 1:02d}" for i in range(len(SITES))],
        rig_id="rig-1",
        rig_name="RSVP rig 1",
        screen={"size_px": 224},
    )
    subject, rig = lab.subject, lab.rig
    sites = dict(zip(SITES, lab.sites, strict=True))

    # Model versions: night 1 fits a standard network, night 2 a robust one that screens better.
    versions = {}
    for version in VERSIONS:
        n = NIGHT_OF[version]
        chosen = version == VERSIONS[1]
        mv = ModelVersion(
            version=version,
            candidate=CANDIDATE_OF[version],
            backbone=CANDIDATE_OF[version],
            layer="layer3",
            artifact_key=f"models/{version}.pt",
            trained_on={"days": list(range(1, n + 1)), "night": n, "n_images": 120 * n},
            metrics={"cka": 0.41 + 0.12 * n, "median_ceiled_predictivity": 0.5 + 0.1 * n, "night": n},
            score=0.5 + 0.1 * n - (0.05 if version == VERSIONS[2] else 0.0),
            chosen=chosen,
            chosen_reason=(
                "highest median noise-ceiled predictivity (0.70 vs 0.60) and perturbation transfer 0.81"
                if chosen
                else ""
            ),
            created_at=t0 + timedelta(days=n - 1, hours=18, minutes=VERSIONS.index(version)),
        )
        session.add(mv)
        session.flush()
        versions[version] = mv
        for i, sid in enumerate(SITES):
            ceiling = 0.8 + 0.04 * i
            raw = (0.35 + 0.08 * n + 0.03 * i) * ceiling
            session.add(
                SiteMetric(
                    model_version_id=mv.id,
                    site_pk=sites[sid].id,
                    predictivity=raw,
                    ceiled_predictivity=raw / ceiling,
                    noise_ceiling=ceiling,
                    transfer_sign=0.6 + 0.1 * n + 0.02 * i,
                    transfer_r=0.3 + 0.2 * n + 0.03 * i,
                    alpha=10.0 ** (2 + i % 2),
                    drift=(sid == SITES[3] and chosen),
                    gated=(sid == SITES[3] and chosen),
                    gate_reason="drift of the reference responses beyond 3 sd"
                    if sid == SITES[3] and chosen
                    else "",
                )
            )
    session.flush()

    # The batch night 1 published and day 2 showed: clean images plus up/down perturbations.
    batch = Batch(
        batch_id=BATCH_ID,
        rig_pk=rig.id,
        day=2,
        state=BatchState.published,
        model_version_id=versions[VERSIONS[1]].id,
        created_at=t0 + timedelta(days=1, hours=20),
        published_at=t0 + timedelta(days=1, hours=23),
    )
    session.add(batch)
    session.flush()
    out = Seeded(viewer_token=token, rig_token=rig_token)
    members: list[tuple[Image, str]] = []
    for c in range(2):
        data = _png(rng)
        clean = _image(
            session, store, data, kind="clean", category=("face", "car")[c], source_name=f"clean-{c}.png"
        )
        members.append((clean, "clean"))
        out.clean.append(clean.sha256)
        base = _pixels(data)
        for sid in SITES[:2]:
            for eps in EPSILONS[:2]:
                pair = {"clean": clean.sha256}
                for direction, sign in (("up", 1.0), ("down", -1.0)):
                    img = _image(
                        session,
                        store,
                        _png(rng, base, shift=0.01 * eps),
                        kind="perturbed",
                        category=clean.category,
                        parent_id=clean.id,
                        model_version_id=versions[VERSIONS[1]].id,
                        site_pk=sites[sid].id,
                        epsilon=eps,
                        direction=direction,
                        seed=1000 + c,
                        predicted_change=sign * 0.3 * eps,
                        achieved_l2=eps * 0.998,
                        provenance={"restarts": 8, "steps": 64},
                    )
                    members.append((img, "perturbed"))
                    pair[direction] = img.sha256
                if c == 0:
                    out.perturbed[(sid, eps)] = pair
    images = []
    for img, role in members:
        session.add(BatchImage(batch_pk=batch.id, image_id=img.id, role=role))
        images.append(
            {
                "sha256": img.sha256,
                "url": f"/api/v1/images/{img.sha256}",
                "width": 64,
                "height": 64,
                "bytes": img.n_bytes,
            }
        )
    sequence = []
    for seq, (img, _) in enumerate(members * 2):
        session.add(SequenceItem(batch_pk=batch.id, seq=seq, image_id=img.id, trial=seq // 10))
        sequence.append(
            {"seq": seq, "image_sha256": img.sha256, "trial": seq // 10, "on_ms": 100, "off_ms": 100}
        )
    batch.manifest = {
        "batch_id": BATCH_ID,
        "rig_id": rig.rig_id,
        "published_at": batch.published_at.isoformat() if batch.published_at else None,
        "model_version": VERSIONS[1],
        "images": images,
        "sequence": sequence,
    }
    session.flush()

    # Two recording days, and their nights.
    sessions = {}
    for day in DAYS:
        rs = RecordingSession(
            session_id=f"m1-2024-05-0{5 + day}",
            subject_id=subject.id,
            rig_pk=rig.id,
            day=day,
            state="complete",
            batch_pk=batch.id if day == 2 else None,
            duration_s=3600.0 + 60 * day,
            created_at=t0 + timedelta(days=day - 1),
            completed_at=t0 + timedelta(days=day - 1, hours=3),
        )
        session.add(rs)
        sessions[day] = rs
    session.flush()
    _record(session, sessions[2], members, [sites[sid] for sid in SITES[:2]])
    kinds = ("responses", "fit_models", "screen_models", "analyze", "synthesize", "render", "publish")
    for day in DAYS:
        last = day == DAYS[-1]
        night = Night(
            session_pk=sessions[day].id,
            state=JobState.failed if last else JobState.succeeded,
            batch_pk=None if last else batch.id,
            model_version_id=versions[VERSIONS[day - 1]].id,
            partial=last,
            note="yesterday's batch stays published" if last else "",
            error=f"job synthesize failed: {FAILED_JOB_ERROR}" if last else None,
            created_at=t0 + timedelta(days=day - 1, hours=17),
            finished_at=t0 + timedelta(days=day - 1, hours=23),
        )
        session.add(night)
        session.flush()
        for k, kind in enumerate(kinds):
            if not last:
                state, progress, error = JobState.succeeded, 1.0, None
            elif kind == "synthesize":
                state, progress, error = JobState.failed, 0.45, FAILED_JOB_ERROR
            elif k < kinds.index("synthesize"):
                state, progress, error = JobState.succeeded, 1.0, None
            elif kind == "render":
                state, progress, error = JobState.running, 0.3, None
            else:
                state, progress, error = JobState.queued, 0.0, None
            session.add(
                Job(
                    kind=kind,
                    night_id=night.id,
                    state=state,
                    progress=progress,
                    progress_message=f"{kind}: {int(progress * 100)}%",
                    attempts=1 if state != JobState.queued else 0,
                    error=error,
                    log_tail=error or "",
                    created_at=night.created_at + timedelta(minutes=k),
                    started_at=night.created_at + timedelta(minutes=k + 1),
                )
            )
    session.flush()

    # Sensitivity: IT (several estimators) and both models, per site and for the population.
    site_gain = {sid: 0.8 + 0.15 * i for i, sid in enumerate(SITES)}
    for day in DAYS:
        bound = 1.0 + 0.2 * (day - 1)  # better surrogates raise the lower bound day over day
        for sid in (*SITES, None):
            gain = site_gain[sid] if sid else 1.0
            where = {
                "session_pk": sessions[day].id,
                "day": day,
                "site_pk": sites[sid].id if sid else None,
                "n_sites": 1 if sid else len(SITES),
            }
            _result(session, where, "random_pair", None, 0.9 * gain, 0.1)
            for eps in EPSILONS:
                it = 0.06 * gain * bound * eps**0.8
                _result(session, where, "plain", eps, it + 0.08, 0.2)
                for est, val in (("sign_corrected", it), ("plain_noise_corrected", 0.95 * it)):
                    neg = NEGATIVE.get((est, day)) if sid is None and eps == EPSILONS[0] else None
                    if neg:
                        _result(session, where, est, eps, neg[0], 0.0, interval=(neg[1], neg[2]))
                    else:
                        _result(session, where, est, eps, val, 0.3)
                _result(session, where, "noise_floor", eps, 0.08, 0.15)
                _result(session, where, "model_free_plain", eps, 0.3 * it + 0.08, 0.25)
                _result(session, where, "model_free_sign_corrected", eps, 0.3 * it, 0.4)
                if day > 1:  # pooled over every day so far: stored from the second day with twins on
                    pooled = 0.06 * gain * (1 + 0.1 * (day - 1)) * eps**0.8
                    for est in TO_DATE_ESTIMATORS:
                        _result(session, where, est, eps, pooled, 0.15, source="it_to_date")
                for version in (v for v in VERSIONS if NIGHT_OF[v] <= day):
                    value = 0.06 * gain * MODEL_GAIN[version] * eps**0.8
                    _result(session, where, "model", eps, value, 0.1, mv=versions[version])
    # One figure that could not be computed, as the analysis reports it.
    session.add(
        AnalysisResult(
            session_pk=sessions[1].id,
            day=1,
            site_pk=sites[SITES[3]].id,
            source="it",
            epsilon=30.0,
            estimator="sign_corrected",
            value=None,
            n_pairs=0,
            n_sites=1,
            undefined_reason="no perturbed pairs at this epsilon",
        )
    )
    session.flush()
    assert math.isfinite(versions[VERSIONS[1]].score or 0.0)
    return out


# What the pages should draw from this seed (used by the tests).
EXPECT = {
    # population, last day, both estimators: IT plain, sign_corrected, noise_floor, noise-corrected,
    # model-free x2, random_pair, IT to date (sign-corrected, noise-corrected), one curve per version.
    "sensitivity_traces_both": len(IT_ESTIMATORS) + TO_DATE_SHOWN + len(VERSIONS),
}
