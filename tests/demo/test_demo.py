"""The closed-loop demo, end to end, on the embedded default (SQLite, in-process jobs, local store).

Three simulated days with 6 sites: the virtual rig pulls each batch over HTTP, shows it to
the simulated brain and uploads the spikes as NWB; the nights refit, synthesise, publish and
analyse. The estimates are checked against the brain's exact ground truth (demo/truth.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from itloop.settings import Settings
from jobs.config import get_worker_config
from jobs.queue import reset_runners
from server.db.engine import get_engine
from tests.conftest import _install_settings, make_settings

# The closed-loop demo end to end: left out of `make test-fast`.
pytestmark = pytest.mark.slow

SITES = 6
DAYS = 3
# Small enough for ~1 minute on 2 busy cores; epsilons large enough that the shown
# perturbations move the simulated sites well above the trial noise.
NIGHT = {
    "candidates": ["small_cnn"],
    "epsilons": [2.0, 4.0, 8.0],
    "clean_per_site": 3,
    "targeted_epsilons": [],
    "random_per_site": 1,
    "restarts": 4,
    "budget": 24,
    "repeats": 8,
    "n_boot": 100,
    "model_sensitivity_images": 1,
    "model_sensitivity_budget": 8,
}
# Thresholds from seeds 0 and 1 (and eps 1-2 / 2-8 variants): per-day mean absolute error
# 0.16-0.29, population sign-corrected minus true effect within +-0.06, plain estimator
# 0.5-0.7 above the truth. Each bound leaves about a 1.5x margin.
MAX_ABS_ERROR = 0.4
MAX_POPULATION_BIAS = 0.15
MIN_PLAIN_BIAS = 0.3
ERROR_SLACK = 0.1


@dataclass
class DemoRun:
    settings: Settings
    report: Path
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One demo run shared by the tests of this module (it is the expensive part)."""
    from demo.run import run_demo

    folder = tmp_path_factory.mktemp("demo")
    settings = make_settings(f"sqlite:///{folder / 'demo.db'}", folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CNNs run far slower with 2 intra-op threads on a busy 2-core box
    with pytest.MonkeyPatch.context() as mp:
        _install_settings(settings, mp)
        mp.setenv("ITLOOP_INPROCESS_BACKGROUND", "true")  # the API server runs the nights itself
        get_worker_config.cache_clear()
        reset_runners()
        try:
            report = run_demo(
                settings, days=DAYS, n_sites=SITES, seed=0, night_params=NIGHT, show_progress=False
            )
            summary = json.loads((report / "summary.json").read_text())
            yield DemoRun(settings, report, summary)
        finally:
            reset_runners()
            get_worker_config.cache_clear()
            torch.set_num_threads(threads)
            get_engine(settings.resolved_database_url).dispose()


def test_demo_writes_its_report(demo_run: DemoRun) -> None:
    files = {p.name for p in demo_run.report.iterdir()}
    assert {"index.html", "summary.json"} <= files
    pngs = {
        "sensitivity_vs_epsilon.png",
        "plain_vs_sign_corrected.png",
        "error_by_day.png",
        "predictivity_by_day.png",
    }
    assert pngs <= files, files
    for name in pngs:
        data = (demo_run.report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert name in (demo_run.report / "index.html").read_text()
    days = demo_run.summary["days"]
    assert [d["day"] for d in days] == list(range(DAYS))
    assert all(d["presentations"] > 0 and d["spikes"] > 0 for d in days)
    assert sum(1 for m in demo_run.summary["models"] if m["chosen"]) == DAYS
    # Every guided twin of a day is counted under exactly one source, and the report shows them.
    page = (demo_run.report / "index.html").read_text()
    assert any((d.get("yardstick") or {}).get("twins") for d in days)
    for d in days:
        y = d.get("yardstick") or {}
        if y.get("twins"):
            assert sum(v["n"] for v in y["by_source"].values()) == y["twins"], y["by_source"]
            for name, v in y["by_source"].items():
                assert f"<tr><td>{d['day']}</td><td>{name}</td><td>{v['n']}</td>" in page


def test_demo_recovers_the_true_sensitivity(demo_run: DemoRun) -> None:
    """Sign-corrected estimates against the brain's truth, in normalised units (demo/truth.py).

    - per day, the mean absolute error of the per-site, per-epsilon sign-corrected estimate
      against the true effect of the perturbations shown is < MAX_ABS_ERROR (observed 0.16-0.29:
      the trial noise of 3 clean images x 2 directions x 8 repeats per site and epsilon);
    - the population estimate is unbiased: within MAX_POPULATION_BIAS of the true mean effect,
      while the plain estimator sits at least MIN_PLAIN_BIAS above it (its noise bias);
    - the error does not grow over days: last day <= first measured day + ERROR_SLACK.

    Not asserted: ranking the sites by their true adversarial sensitivity. With small_cnn
    surrogates the shown perturbations move the simulated sites by ~2% of the exact maximum
    (true effect ~0.02-0.1 against a true sensitivity of 0.4-5.7 at eps 2-8), far below the
    trial noise, so the per-site Spearman against the true sensitivity is chance (observed
    -0.6 to +0.14 over seeds and days). The demo cannot rank sites until its surrogates transfer.
    """
    from demo.run import _tokens
    from server.app import create_app

    measured = [d for d in demo_run.summary["days"] if d["mean_abs_error"] is not None]
    assert len(measured) == DAYS - 1  # day 0 shows clean images only: nothing to compare
    for d in measured:
        assert d["mean_abs_error"] < MAX_ABS_ERROR, d
        assert np.isfinite(d["spearman"]), d  # every site was measured and compared
    assert measured[-1]["mean_abs_error"] <= measured[0]["mean_abs_error"] + ERROR_SLACK, measured

    viewer = {"Authorization": f"Bearer {_tokens(demo_run.settings)['viewer']}"}
    with TestClient(create_app(demo_run.settings)) as api:
        for d in measured:

            def population(estimator: str, day: int = d["day"]) -> float:
                r = api.get(
                    "/api/v1/analysis/sensitivity",
                    headers=viewer,
                    params={"day": day, "source": "it", "estimator": estimator, "population": "true"},
                )
                assert r.status_code == 200, r.text
                values = [x["value"] for x in r.json()["items"] if x["epsilon"] in NIGHT["epsilons"]]
                assert len(values) == len(NIGHT["epsilons"]), r.json()
                return float(np.mean(values))

            truth = d["mean_true_effect"]
            assert abs(population("sign_corrected") - truth) < MAX_POPULATION_BIAS, (
                d,
                population("sign_corrected"),
            )
            assert population("plain") - truth > MIN_PLAIN_BIAS, (d, population("plain"))


def test_virtual_rig_uploads_are_validated_like_any_clients(demo_run: DemoRun, tmp_path: Path) -> None:
    """The rig's own NWB writer and upload path, with one presentation naming an unknown image: 422."""
    from demo.run import _tokens, rig_token
    from demo.server import BackgroundServer
    from demo.virtual_rig import write_nwb

    subject = demo_run.summary["subject"]
    rig_id = subject.replace("demo-monkey-", "demo-rig-")
    tokens = _tokens(demo_run.settings)
    with BackgroundServer(demo_run.settings) as server:
        http = httpx.Client(
            base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['experimenter']}"}
        )
        site_ids = [
            s["site_id"]
            for s in http.get("/sites", params={"subject": subject, "limit": 500}).json()["items"]
        ]
        assert len(site_ids) == SITES
        manifest = http.get(
            f"/rigs/{rig_id}/batches/next",
            headers={"Authorization": f"Bearer {rig_token(demo_run.settings, rig_id)}"},
        )
        assert manifest.status_code == 200, manifest.text
        seq = sorted(manifest.json()["sequence"], key=lambda s: s["seq"])[:40]
        onsets = 1.0 + 0.2 * np.arange(len(seq))
        shas = [s["image_sha256"] for s in seq]
        rng = np.random.default_rng(0)
        spikes = [np.sort(rng.uniform(1.0, onsets[-1] + 0.2, 50)) for _ in site_ids]

        def upload(session_id: str, image_shas: list[str]) -> httpx.Response:
            r = http.post(
                "/sessions",
                json={"session_id": session_id, "subject": subject, "rig_id": rig_id, "day": DAYS},
            )
            assert r.status_code in (200, 201), r.text
            path = write_nwb(
                tmp_path / f"{session_id}.nwb",
                session_id=session_id,
                site_ids=site_ids,
                spikes=spikes,
                onsets=onsets,
                on_s=0.1,
                shas=image_shas,
                event_ids=[f"{session_id}:{s['seq']}" for s in seq],
                fixation_ok=np.ones(len(seq), dtype=bool),
            )
            files = {"file": (path.name, io.BytesIO(path.read_bytes()), "application/x-nwb")}
            return http.post(f"/sessions/{session_id}/spikes", files=files)

        unknown = "ab" * 32
        tampered = upload("tampered", [*shas[:-1], unknown])
        assert tampered.status_code == 422, tampered.text
        assert unknown in tampered.json()["detail"]
        stored = http.get("/sessions/tampered").json()
        assert not stored.get("ingest"), stored  # nothing of the refused upload was kept
        ok = upload("untampered", shas)  # the same upload with the real hashes goes through
        assert ok.status_code in (200, 201), ok.text
        assert ok.json()["presentations"] == len(seq)
        http.close()


def test_estimates_to_date_pool_the_days_and_tighten(demo_run: DemoRun) -> None:
    """On the last day, source ``it_to_date`` pools both days with twins: per site and epsilon it
    counts the day's pairs and yesterday's, and its confidence intervals are narrower on
    average than the day's own (more pairs of the same sites)."""
    from demo.run import _tokens
    from server.app import create_app

    last = DAYS - 1
    viewer = {"Authorization": f"Bearer {_tokens(demo_run.settings)['viewer']}"}
    with TestClient(create_app(demo_run.settings)) as api:

        def rows(source: str, day: int) -> dict[tuple[str, float], dict[str, Any]]:
            r = api.get(
                "/api/v1/analysis/sensitivity",
                headers=viewer,
                params={
                    "day": day,
                    "source": source,
                    "estimator": "sign_corrected",
                    "population": "false",
                    "limit": 500,
                },
            )
            assert r.status_code == 200, r.text
            return {(x["site_id"], x["epsilon"]): x for x in r.json()["items"]}

        assert rows("it_to_date", 1) == {}  # one day of twins: nothing to pool yet
        today, before, pooled = rows("it", last), rows("it", last - 1), rows("it_to_date", last)
    assert set(pooled) == set(today), "every site and epsilon of the day has a figure to date"
    for key, p in pooled.items():
        assert p["n_pairs"] == today[key]["n_pairs"] + before.get(key, {}).get("n_pairs", 0), key
    width = {
        k: np.mean([x["ci_high"] - x["ci_low"] for x in d.values() if x["ci_high"] is not None])
        for k, d in (("day", today), ("to date", pooled))
    }
    assert width["to date"] < width["day"], width
