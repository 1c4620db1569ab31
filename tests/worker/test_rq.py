"""RQ runner: real Redis, workers in subprocesses (``python -m jobs.rq_entry --burst``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from itloop.settings import Settings
from jobs.handoff import ticket
from jobs.queue import RQRunner, get_runner
from jobs.state import Ticket
from server.db.base import as_utc
from server.jobs.tables import JobState
from tests.factories import load, submit
from tests.worker import jobs_for_tests as tj
from tests.worker.conftest import WorkerProcess


def rq_runner(settings: Settings) -> RQRunner:
    r = get_runner(settings)
    assert isinstance(r, RQRunner)
    return r


def test_rq_worker_runs_a_dag_and_the_queue_carries_only_ids(
    rq_settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    marker = tmp_path / "marks"
    a = submit(rq_settings, "test.echo", {"tag": "a", "marker": str(marker)})
    b = submit(rq_settings, "test.echo", {"tag": "b", "marker": str(marker)}, depends_on=[a])
    gpu = submit(rq_settings, "test.echo", {"tag": "g", "marker": str(marker)}, queue="itloop-gpu")
    runner = rq_runner(rq_settings)
    assert runner.present_job_ids() == {a, gpu}  # b waits in the database, not in Redis
    rq_job = runner.queue(rq_settings.queue_name).jobs[0]
    created = as_utc(load(rq_settings, a).created_at).timestamp()
    assert rq_job.args == (a, pytest.approx(created, abs=1e-3))  # the id, and which job of that id
    assert rq_job.func_name == "jobs.execute.execute_job"
    assert rq_job.timeout == load(rq_settings, a).timeout_s

    worker = start_worker("--burst", "--queue", rq_settings.queue_name)
    assert worker.wait() == 0, worker.output()
    assert [load(rq_settings, i).state for i in (a, b)] == [JobState.succeeded] * 2
    assert [m[3] for m in tj.marks(marker)] == ["a", "b"]
    assert load(rq_settings, gpu).state == JobState.queued  # nobody served the GPU queue
    assert load(rq_settings, a).worker and load(rq_settings, a).heartbeat_at is not None


def test_rq_enforces_the_timeout_of_a_job_that_never_checks(
    rq_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    job_id = submit(rq_settings, "test.block", {"seconds": 20}, timeout_s=1, max_attempts=3)
    worker = start_worker("--burst")
    assert worker.wait(timeout_s=30) == 0, worker.output()
    job = load(rq_settings, job_id)
    assert (job.state, job.attempts, job.error) == (JobState.failed, 1, "timed out after 1 s")


def test_two_workers_never_run_one_job_twice(
    rq_settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    marker = tmp_path / "marks"
    job_id = submit(rq_settings, "test.sleep", {"seconds": 0.6, "marker": str(marker)})
    runner = rq_runner(rq_settings)
    job = load(rq_settings, job_id)
    runner.enqueue([Ticket(job_id, job.queue, job.timeout_s)] * 3)  # duplicates, as after a reaper pass
    assert runner.queue(job.queue).count == 4
    workers = [start_worker("--burst"), start_worker("--burst")]
    for w in workers:
        assert w.wait() == 0, w.output()
    done = load(rq_settings, job_id)
    assert (done.state, done.attempts) == (JobState.succeeded, 1)
    assert len(tj.marks(marker)) == 1
    assert Redis.from_url(rq_settings.redis_url).llen(f"rq:queue:{job.queue}") == 0  # type: ignore[arg-type]


def test_a_job_of_another_deployment_on_a_shared_redis_is_refused_loudly(
    rq_settings: Settings,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two deployments on one Redis database share its queues; each one's job 7 is its own.

    A worker that took the other deployment's id used to find a job of that id here that was
    not runnable and drop it silently, while the other night waited forever.
    """
    marker = tmp_path / "marks"
    job_id = submit(rq_settings, "test.echo", {"tag": "mine", "marker": str(marker)})
    runner = rq_runner(rq_settings)
    job = load(rq_settings, job_id)
    runner.queue(job.queue).empty()  # only the other deployment's tickets on the queue
    created = as_utc(job.created_at).timestamp()
    runner.enqueue(
        [
            Ticket(job_id, job.queue, job.timeout_s, created_at=created - 3600),  # their job of our id
            Ticket(job_id + 1000, job.queue, job.timeout_s, created_at=created),  # an id we never had
        ]
    )
    monkeypatch.setenv("ITLOOP_REQUEUE_GRACE_S", "3600")  # its reaper leaves our queued job alone
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.output()
    assert (load(rq_settings, job_id).state, load(rq_settings, job_id).attempts) == (JobState.queued, 0)
    out = worker.output()
    assert f"job {job_id} on the queue is another deployment's" in out, out
    assert f"job {job_id + 1000} on the queue is not in this database" in out, out
    assert out.count("ITLOOP_REDIS_URL") == 2 and not tj.marks(marker)

    runner.enqueue([ticket(load(rq_settings, job_id))])  # our own ticket is run
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.output()
    assert load(rq_settings, job_id).state == JobState.succeeded
    assert [m[3] for m in tj.marks(marker)] == ["mine"]
