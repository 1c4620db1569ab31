"""``itloop demo``: N days of the closed loop against a simulated IT population.

Seeds a subject, sites, a rig and clean + reference image sets through the API,
publishes the day-0 batch (clean images only: there is no model yet), then each
day: the virtual rig shows the batch and uploads spikes, the night refits,
screens, synthesises and publishes the next batch and analyses the day. At the end
the estimates are checked against the brain's exact ground truth and a report
folder is written.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from itloop.settings import Settings

log = logging.getLogger(__name__)

DEMO_NIGHT = {
    "candidates": ["smooth16", "vone_energy_blend"],
    "epsilons": [0.5, 1.0, 2.0],
    "clean_per_site": 3,
    "targeted_epsilons": [1.0, 3.0],
    "targeted_per_site": 1,
    "random_per_site": 2,
    "restarts": 4,
    "budget": 24,
    "sites_per_shard": 4,
    "repeats": 8,
    "pair_separation_s": 1500.0,
    "ceiling_threshold": 0.2,
    "n_boot": 300,
    "model_sensitivity_images": 2,
    "model_sensitivity_budget": 32,
}
TERMINAL = {"succeeded", "failed", "cancelled"}
MAX_FILES_PER_UPLOAD = 1000  # the multipart parser's limit per request (docs/rest-contract.md)


def _tokens(settings: Settings) -> dict[str, str]:
    """One user per role for the demo (new tokens on every run; users are reused).

    The "rig" token here acts for no rig (its user is named after none); the virtual rig gets
    its own rig's token from :func:`rig_token`.
    """
    from sqlalchemy import select

    from server.auth import service
    from server.auth.tables import User
    from server.db.engine import session_scope

    out = {}
    with session_scope(settings.resolved_database_url) as session:
        for role in ("admin", "experimenter", "rig", "viewer"):
            name = f"demo-{role}"
            user = session.scalar(select(User).where(User.name == name)) or service.create_user(
                session=session, name=name, role=role
            )
            out[role] = service.create_token(session=session, user=user, name="demo")
    return out


def rig_token(settings: Settings, rig_id: str) -> str:
    """A new token of the rig's own account (a user named ``rig_id``, role rig; made if missing).

    A rig token acts only for the rig its user is named after (``server.batches.service``).
    """
    from sqlalchemy import select

    from server.auth import service
    from server.auth.tables import User
    from server.db.engine import session_scope

    with session_scope(settings.resolved_database_url) as session:
        user = session.scalar(select(User).where(User.name == rig_id)) or service.create_user(
            session=session, name=rig_id, role="rig"
        )
        return service.create_token(session=session, user=user, name="demo")


def _png(pixels: np.ndarray) -> bytes:
    from server.images.png import encode_png

    return encode_png(pixels)


def _check(r: httpx.Response, what: str) -> Any:
    if r.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json() if r.content else None


def seed_lab(
    api: dict[str, httpx.Client], *, n_sites: int, seed: int, tag: str, n_clean: int = 48
) -> dict[str, Any]:
    """Subject, array, sites, rig and image sets (``n_clean`` clean images), all through the public API."""
    from models.simulator import make_clean_images, make_reference_images

    subject, rig_id = f"demo-monkey-{tag}", f"demo-rig-{tag}"
    site_ids = [f"{tag}-A-{i:03d}" for i in range(n_sites)]
    exp = api["experimenter"]
    _check(exp.post("/subjects", json={"name": subject}), "subject")
    _check(exp.post("/arrays", json={"name": "A", "subject": subject}), "array")
    _check(
        exp.post(
            "/sites",
            json=[
                {"site_id": s, "array": "A", "subject": subject, "electrode": str(i)}
                for i, s in enumerate(site_ids)
            ],
        ),
        "sites",
    )
    _check(
        api["admin"].post("/rigs", json={"rig_id": rig_id, "name": "virtual rig", "subject": subject}), "rig"
    )
    clean, cats = make_clean_images(n_clean, size=64, n_categories=4, seed=seed)
    names = ["animal", "face", "object", "scene"]
    import json

    # One upload takes at most MAX_FILES_PER_UPLOAD files; a larger pool goes up as several sets,
    # which the nights use as one clean pool in set order.
    for k, lo in enumerate(range(0, n_clean, MAX_FILES_PER_UPLOAD)):
        part = range(lo, min(lo + MAX_FILES_PER_UPLOAD, n_clean))
        files = [("files", (f"c{i:03d}.png", io.BytesIO(_png(clean[i])), "image/png")) for i in part]
        _check(
            exp.post(
                "/image-sets",
                data={
                    "name": f"clean-{tag}" + (f"-{k + 1}" if k else ""),
                    "categories": json.dumps([names[int(cats[i])] for i in part]),
                },
                files=files,
            ),
            "clean image set",
        )
    ref, _ = make_reference_images(12, size=64, n_categories=4)
    files = [("files", (f"r{i:03d}.png", io.BytesIO(_png(im)), "image/png")) for i, im in enumerate(ref)]
    _check(
        exp.post("/image-sets", data={"name": f"reference-{tag}", "is_reference": "true"}, files=files),
        "reference set",
    )
    return {"subject": subject, "rig_id": rig_id, "site_ids": site_ids}


def _wait_night(viewer: httpx.Client, night_id: int, bar: tqdm, timeout_s: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        night = _check(viewer.get(f"/nights/{night_id}"), "night status")
        jobs = night.get("jobs") or []
        done = sum(1 for j in jobs if j["state"] == "succeeded")
        running = [j for j in jobs if j["state"] == "running"]
        bar.set_postfix_str(f"jobs {done}/{len(jobs)}" + (f", {running[0]['kind']}" if running else ""))
        if night["state"] in TERMINAL:
            return night
        if time.monotonic() > deadline:
            raise TimeoutError(f"night {night_id} did not finish in {timeout_s} s")
        time.sleep(0.5)


def run_demo(
    settings: Settings,
    *,
    days: int = 3,
    n_sites: int = 16,
    out: Path | None = None,
    seed: int = 0,
    night_params: dict[str, Any] | None = None,
    show_progress: bool = True,
    brain_family: str = "orthogonal",
    n_clean: int = 48,
    fresh_repeats: int | None = None,
) -> Path:
    """Run the loop and write the report; returns the report folder.

    ``n_clean`` is how many clean images each day shows besides the twins' parents: day 0 shows
    the first ``n_clean`` of a clean set of ``n_clean * days`` images, and every night brings in
    ``n_clean`` the monkey has not seen yet (the night parameter ``fresh_clean``). They are what
    the surrogates learn each site's tuning from (the twins add probes near a few of them), and
    new images teach them more than repeats of the same ones. ``fresh_repeats`` (default: the
    night's ``repeats``) is how often each of them is shown, on day 0 and after.

    ``brain_family`` names the simulated population (:data:`models.simulator.FAMILIES`); the
    report's yardstick judges the loop against that family's white-box truth.
    """
    from demo.report import write_report
    from demo.server import BackgroundServer
    from demo.truth import evaluate_day
    from demo.virtual_rig import VirtualRig
    from demo.yardstick import History
    from models.simulator import make_brain
    from server.db import migrate

    if days < 1:
        raise ValueError("days must be >= 1")
    if n_clean < 4:
        raise ValueError("the clean image set needs at least 4 images (one per category)")
    brain = make_brain(brain_family, n_sites=n_sites, image_size=64, seed=seed)  # refuses unknown families
    settings.ensure_dirs()
    migrate.upgrade(settings.resolved_database_url)
    out = Path(out) if out else settings.data_dir / "demo-report"
    tokens = _tokens(settings)
    # Simulated days run back to back: the rig-time deadline of a real lab does not apply.
    far = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    params = {**DEMO_NIGHT, "fresh_clean": n_clean, "seed": seed, "deadline": far, **(night_params or {})}
    if fresh_repeats is not None:
        params["fresh_repeats"] = fresh_repeats
    worker_proc = None
    if settings.redis_url:  # jobs go to RQ: this demo brings its own worker process
        env = {
            **os.environ,
            "ITLOOP_DATABASE_URL": settings.resolved_database_url,
            "ITLOOP_REDIS_URL": settings.redis_url,
            "ITLOOP_STORE_URL": settings.resolved_store_url,
            "ITLOOP_DATA_DIR": str(settings.data_dir),
        }
        worker_proc = subprocess.Popen([sys.executable, "-m", "itloop.cli", "worker"], env=env)
    server = BackgroundServer(settings).start()
    api = {
        role: httpx.Client(
            base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {tok}"}, timeout=600
        )
        for role, tok in tokens.items()
    }
    days_log: list[dict[str, Any]] = []
    # What the yardstick saw on earlier days, for its to-date figures.
    yardstick_history = History()
    try:
        # Site ids seed the image choice: derive them from the seed (and how many demo labs this
        # data folder already holds), not from the clock, so a fresh run is reproducible.
        subjects = _check(api["viewer"].get("/subjects", params={"limit": 500}), "subjects")["items"]
        earlier = sum(1 for x in subjects if x["name"].startswith(f"demo-monkey-s{seed}-"))
        pool = n_clean * max(days, 1)  # a new n_clean for every recorded day
        lab = seed_lab(api, n_sites=n_sites, seed=seed, tag=f"s{seed}-{earlier}", n_clean=pool)
        _check(
            api["experimenter"].post(
                f"/rigs/{lab['rig_id']}/batches/initial",
                json={
                    "repeats": params.get("fresh_repeats") or params["repeats"],
                    "seed": seed,
                    "clean_images": n_clean,
                },
            ),
            "day-0 batch",
        )
        rig = VirtualRig(
            base_url=server.url,
            rig_token=rig_token(settings, lab["rig_id"]),
            experimenter_token=tokens["experimenter"],
            rig_id=lab["rig_id"],
            subject=lab["subject"],
            brain=brain,
            site_ids=lab["site_ids"],
            cache_dir=settings.data_dir / "rig-cache",
            seed=seed,
        )
        bar = tqdm(range(days), desc="closed loop", unit="day", disable=not show_progress)
        for day in bar:
            session_id = f"{lab['subject']}-day{day}"
            bar.set_description(f"day {day}: rig")
            run = rig.run_day(session_id=session_id, day=day)
            bar.set_description(f"day {day}: night")
            night = _check(
                api["experimenter"].post("/nights", json={"session_id": session_id, "params": params}),
                "start night",
            )
            # The recording day is over, as a lab marks it. The demo's own night (with its small
            # parameters) is already active, so an automatic night (ITLOOP_AUTO_NIGHT) does not
            # start a second one; the answer says so.
            _check(api["experimenter"].post(f"/sessions/{session_id}/complete"), "complete session")
            night = _wait_night(api["viewer"], night["id"], bar)
            if night["state"] != "succeeded":
                raise RuntimeError(f"night of day {day} {night['state']}: {night.get('error')}")
            truth = evaluate_day(api["viewer"], rig, run, lab["site_ids"], day, yardstick_history)
            days_log.append(
                {
                    "day": day,
                    "session_id": session_id,
                    "batch_id": run.batch_id,
                    "presentations": run.presentations,
                    "spikes": run.spikes,
                    "night": night,
                    "truth": truth,
                }
            )
        rig.close()
        report = write_report(out, api["viewer"], days_log, lab, brain)
    finally:
        for c in api.values():
            c.close()
        server.stop()
        if worker_proc is not None:
            worker_proc.terminate()
            worker_proc.wait(timeout=30)
    log.info("demo report written to %s", report)
    return report
