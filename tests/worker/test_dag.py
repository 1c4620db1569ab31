"""Dependencies: dependents wait and run in order, fail with their dependency; retries; fan-out; nights."""

from __future__ import annotations

from pathlib import Path

import pytest

from itloop.settings import Settings
from jobs import state as service
from jobs.queue import InProcessRunner, get_runner
from jobs.registry import JOBS, load_job_modules, overridden
from server.db.engine import session_scope
from server.jobs.tables import JobState
from server.lab.tables import Subject
from server.recordings.tables import RecordingSession
from tests.factories import load, submit, wait_for
from tests.worker import jobs_for_tests as tj
from worker import api as jobs_api
from worker import night as night_mod


def runner(settings: Settings) -> InProcessRunner:
    r = get_runner(settings, background=False)
    assert isinstance(r, InProcessRunner)
    return r


def test_dependents_wait_then_run_in_order(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    a = submit(job_settings, "test.echo", {"tag": "a", "marker": str(marker)})
    b = submit(job_settings, "test.echo", {"tag": "b", "marker": str(marker)}, depends_on=[a])
    c = submit(job_settings, "test.echo", {"tag": "c", "marker": str(marker)}, depends_on=[a])
    d = submit(job_settings, "test.echo", {"tag": "d", "marker": str(marker)}, depends_on=[c, b])
    assert [load(job_settings, i).state for i in (a, b, c, d)] == ["queued", "waiting", "waiting", "waiting"]

    assert runner(job_settings).run_next() == a
    assert [load(job_settings, i).state for i in (b, c, d)] == ["queued", "queued", "waiting"]
    assert runner(job_settings).run_until_idle() == 3

    order = [m[3] for m in tj.marks(marker)]
    assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]
    final = load(job_settings, d)
    assert final.state == JobState.succeeded and final.progress == 1.0
    assert final.result == {"tag": "d", "upstream": ["b", "c"]}


def test_failed_dependency_fails_dependents(job_settings: Settings, tmp_path: Path) -> None:
    a = submit(job_settings, "test.fail", {"fail_times": 9}, max_attempts=2)
    b = submit(job_settings, "test.echo", {"tag": "b"}, depends_on=[a])
    c = submit(job_settings, "test.echo", {"tag": "c"}, depends_on=[b])
    other = submit(job_settings, "test.echo", {"tag": "independent"})
    runner(job_settings).run_until_idle()

    ja, jb, jc = (load(job_settings, i) for i in (a, b, c))
    assert (ja.state, ja.attempts) == (JobState.failed, 2)
    assert ja.error == "RuntimeError: planned failure 2"  # one line for the API
    assert "Traceback" in ja.log_tail and "planned failure 1" in ja.log_tail  # both attempts kept
    assert (jb.state, jb.error) == (JobState.failed, f"dependency {a} failed")
    assert (jc.state, jc.error) == (JobState.failed, f"dependency {b} failed")
    assert jb.attempts == 0 and jc.attempts == 0
    assert load(job_settings, other).state == JobState.succeeded
    # A job submitted later on a failed dependency fails at once.
    late = submit(job_settings, "test.echo", {}, depends_on=[a])
    assert load(job_settings, late).state == JobState.failed


def test_retries_are_bounded_by_max_attempts(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    flaky = submit(job_settings, "test.fail", {"fail_times": 2, "marker": str(marker)}, max_attempts=3)
    hopeless = submit(job_settings, "test.fail", {"fail_times": 3, "marker": str(marker)}, max_attempts=3)
    assert runner(job_settings).run_until_idle() == 6  # 3 attempts each

    ok, bad = load(job_settings, flaky), load(job_settings, hopeless)
    assert (ok.state, ok.attempts, ok.result) == (JobState.succeeded, 3, {"attempt": 3})
    assert ok.error is None
    assert (bad.state, bad.attempts) == (JobState.failed, 3)
    assert bad.error == "RuntimeError: planned failure 3"
    assert [m[1] for m in tj.marks(marker)] == [str(flaky)]  # the hopeless one never got through


def test_fan_out_children_run_before_the_join(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    parent = submit(job_settings, "test.fanout", {"n": 3, "marker": str(marker)})
    join = submit(job_settings, "test.echo", {"tag": "join", "marker": str(marker)}, depends_on=[parent])
    assert runner(job_settings).run_until_idle() == 5

    children = load(job_settings, parent).result["children"]  # type: ignore[index]
    joined = load(job_settings, join)
    assert joined.depends_on == [parent, *children]
    assert joined.result == {"tag": "join", "upstream": ["child0", "child1", "child2"]}
    order = [m[3] for m in tj.marks(marker)]
    assert order[-1] == "join" and sorted(order[1:4]) == ["child0", "child1", "child2"]


def _recording(settings: Settings, session_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        subject = Subject(name=f"monkey-{session_id}")
        session.add(subject)
        session.flush()
        session.add(RecordingSession(session_id=session_id, subject_id=subject.id, day=1))


def test_night_dag_runs_every_stage_in_order(job_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marks"
    _recording(job_settings, "day1")
    stages = dict.fromkeys(night_mod.STAGES, tj.night_step)
    with overridden(stages):
        with session_scope(job_settings.resolved_database_url) as session:
            night = night_mod.start_night(
                session,
                job_settings,
                session_id="day1",
                params={"candidates": ["m1", "m2"], "marker": str(marker), "search_share": 0},
                validate=False,  # stub stages with stub params
            )
            night_id = night.id
        runner(job_settings).run_until_idle()

    with session_scope(job_settings.resolved_database_url) as session:
        night = service.get_night(session, night_id)
        jobs = service.night_jobs(session, night_id)
        assert (night.state, night.error) == (JobState.succeeded, None)
        assert night.finished_at is not None
        assert all(j.state == JobState.succeeded for j in jobs)
        select_job = next(j for j in jobs if j.kind == night_mod.SELECT)
        assert select_job.result["chosen"] == ["m1", "m2"]  # type: ignore[index]
        shards = sorted(j.params["eps"] for j in jobs if j.kind == night_mod.SYNTHESIZE)
        assert shards == [1.0, 2.0]
    kinds = [m[0] for m in tj.marks(marker)]
    assert len(kinds) == 10  # responses, 2 refits, select, 2 shards, assemble, schedule, publish, analyze
    assert kinds[0] == night_mod.RESPONSES and kinds[-1] == night_mod.ANALYZE
    assert kinds.index(night_mod.SELECT) > max(i for i, k in enumerate(kinds) if k == night_mod.REFIT)
    assert kinds.index(night_mod.ASSEMBLE) > max(i for i, k in enumerate(kinds) if k == night_mod.SYNTHESIZE)
    assert kinds[-4:] == [night_mod.ASSEMBLE, night_mod.SCHEDULE, night_mod.PUBLISH, night_mod.ANALYZE]


def test_a_failing_stage_fails_the_night_and_says_why(job_settings: Settings) -> None:
    _recording(job_settings, "day2")
    stages = dict.fromkeys(night_mod.STAGES, tj.night_step)
    with (
        overridden(stages, max_attempts=1),
        overridden({night_mod.REFIT: tj.night_step_broken}, max_attempts=1),
    ):
        with session_scope(job_settings.resolved_database_url) as session:
            night_id = night_mod.start_night(
                session,
                job_settings,
                session_id="day2",
                params={"candidates": ["m1"], "search_share": 0},
                validate=False,  # stub stages with stub candidates
            ).id
        runner(job_settings).run_until_idle()
        with session_scope(job_settings.resolved_database_url) as session:
            night = service.get_night(session, night_id)
            states = {j.kind: j.state for j in service.night_jobs(session, night_id)}
            assert night.state == JobState.failed and night.finished_at is not None
            assert "night.refit" in night.error and "no usable responses for candidate m1" in night.error  # type: ignore[operator]
            assert states[night_mod.RESPONSES] == JobState.succeeded
            assert states[night_mod.PUBLISH] != JobState.succeeded
            # A second night for the same session may start once the first is over.
            again = night_mod.start_night(
                session, job_settings, session_id="day2", params={"candidates": ["m1"]}, validate=False
            )
            assert again.id != night_id


def test_night_cli_runs_the_night_and_reports_failure(job_settings: Settings) -> None:
    _recording(job_settings, "day3")
    stages = dict.fromkeys(night_mod.STAGES, tj.night_step)
    with overridden(stages, max_attempts=1):
        assert night_mod.run_night_cli(job_settings, session_id="day3", wait=True, poll_s=0.05) == 0
        with overridden({night_mod.PUBLISH: tj.night_step_broken}, max_attempts=1):
            assert night_mod.run_night_cli(job_settings, session_id="day3", wait=True, poll_s=0.05) == 1
    with session_scope(job_settings.resolved_database_url) as session:
        nights, total = service.list_nights(session)
        assert total == 2 and [n.state for n in nights] == [JobState.failed, JobState.succeeded]
        assert "night.publish" in (nights[0].error or "")


def test_completing_a_session_starts_its_night(
    job_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """ITLOOP_AUTO_NIGHT: one explicit call; never blocks the completion; falls back without checkpoints.

    A refusal is logged as a warning, except the session's own night already running (the lab
    started it before completing the session): that is normal, logged at info.
    """
    import logging

    caplog.set_level(logging.INFO, logger="worker.api")
    auto = job_settings.model_copy(update={"auto_night": True})
    _recording(job_settings, "day4")
    with session_scope(job_settings.resolved_database_url) as session:
        off = jobs_api.night_after_session_complete(session, job_settings, session_id="day4")
        assert off == jobs_api.AutoNight(enabled=False)
        load_job_modules()
        publish = JOBS.pop(night_mod.PUBLISH)  # a stage not installed: refused, reported, not raised
        try:
            missing = jobs_api.night_after_session_complete(session, auto, session_id="day4")
        finally:
            JOBS[night_mod.PUBLISH] = publish
        assert missing.night_id is None and "night.publish" in (missing.note or "")
        assert [r.levelname for r in caplog.records if "no night started" in r.message] == ["WARNING"]
        caplog.clear()
        assert service.list_nights(session)[1] == 0
        with overridden(dict.fromkeys(night_mod.STAGES, tj.night_step)):
            first = jobs_api.night_after_session_complete(session, auto, session_id="day4")
            again = jobs_api.night_after_session_complete(session, auto, session_id="day4")
        # The default candidates' checkpoint files are not in this data dir: checkpoint-free
        # candidates instead, and the note names the missing file and where it goes.
        assert first.enabled and first.night_id is not None
        assert "resnet50.pt" in (first.note or "") and str(job_settings.data_dir) in (first.note or "")
        assert again.night_id is None and "already" in (again.note or "")
        assert [r.levelname for r in caplog.records if "no night started" in r.message] == ["INFO"]
        nights, total = service.list_nights(session)
        assert total == 1 and nights[0].state == JobState.queued
        assert nights[0].params["candidates"] == ["smooth16", "vone_energy_blend"]
        assert nights[0].note == first.note


def test_background_runner_runs_submitted_jobs(job_settings: Settings) -> None:
    r = get_runner(job_settings, background=True)
    try:
        job_id = submit(job_settings, "test.echo", {"tag": "bg"})
        b = submit(job_settings, "test.echo", {"tag": "bg2"}, depends_on=[job_id])
        wait_for(lambda: load(job_settings, b).state == JobState.succeeded, what="background jobs")
    finally:
        assert isinstance(r, InProcessRunner)
        r.shutdown()


def test_a_setting_that_names_the_old_stage_module_still_loads_the_night() -> None:
    """``ITLOOP_JOB_MODULES=worker.night,worker.steps`` (the stages' old home) keeps a deployed
    worker running: the stages load from their new module and the log says to update it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["ITLOOP_JOB_MODULES"] = "worker.night,worker.steps"
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from jobs.registry import JOBS, load_job_modules\n"
        "load_job_modules(); print(sorted(k for k in JOBS if k.startswith('night.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "night.synthesize" in out.stdout and "night.refit" in out.stdout
    assert "now worker.stages" in out.stderr
