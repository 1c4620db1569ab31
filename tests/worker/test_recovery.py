"""The reaper: a worker killed with kill -9, a flushed Redis, stale jobs out of attempts, stuck dependents."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis
from sqlalchemy import update

from itloop.settings import Settings
from jobs import state as service
from jobs.queue import get_runner
from jobs.reaper import reap
from server.db.base import utcnow
from server.db.engine import session_scope
from server.jobs.tables import Job, JobState
from tests.factories import load, submit, wait_for
from tests.worker import jobs_for_tests as tj
from tests.worker.conftest import WorkerProcess


def age_s(moment: datetime | None) -> float:
    """Seconds since ``moment`` (SQLite hands datetimes back without their UTC offset)."""
    assert moment is not None
    return (utcnow() - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds()


def test_job_of_a_killed_worker_completes_exactly_once(
    rq_settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    marker = tmp_path / "marks"
    job_id = submit(rq_settings, "test.sleep", {"seconds": 1.5, "marker": str(marker)}, max_attempts=3)
    first = start_worker("--burst")

    def beating() -> bool:
        job = load(rq_settings, job_id)
        return job.state == JobState.running and job.heartbeat_at > job.started_at + timedelta(seconds=0.3)

    wait_for(beating, what="the job running with heartbeats from its background thread")
    first.kill()  # kill -9, mid-job: nothing gets recorded
    assert load(rq_settings, job_id).state == JobState.running
    with session_scope(rq_settings.resolved_database_url) as session:
        assert not reap(session, get_runner(rq_settings), stale_after_s=30.0)  # not stale yet
    wait_for(lambda: age_s(load(rq_settings, job_id).heartbeat_at) > 1.2, what="the heartbeat to go stale")

    second = start_worker("--burst")  # reaps at start (ITLOOP_STALE_AFTER_S=1), then runs it again
    assert second.wait() == 0, second.output()
    job = load(rq_settings, job_id)
    assert (job.state, job.attempts) == (JobState.succeeded, 2), second.output()
    assert job.result == {"slept": 1.5, "attempt": 2}
    assert [m[:3] for m in tj.marks(marker)] == [["test.sleep", str(job_id), "2"]]  # the side effect, once
    assert "attempt 1 of 3" in job.log_tail and "attempt 2 of 3" in job.log_tail
    assert "re-queued" in second.output()


def test_flushed_redis_jobs_are_reenqueued_and_complete(
    rq_settings: Settings, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    marker = tmp_path / "marks"
    ids = [submit(rq_settings, "test.echo", {"tag": str(i), "marker": str(marker)}) for i in range(3)]
    waiting = submit(rq_settings, "test.echo", {"tag": "w", "marker": str(marker)}, depends_on=ids)
    runner = get_runner(rq_settings)
    assert runner.present_job_ids() == set(ids)
    Redis.from_url(rq_settings.redis_url).flushdb()  # type: ignore[arg-type]
    assert runner.present_job_ids() == set()

    with session_scope(rq_settings.resolved_database_url) as session:
        report = reap(session, runner, requeue_grace_s=0.0)
    assert report.reenqueued == ids and not report.requeued and not report.failed
    assert runner.present_job_ids() == set(ids)
    with session_scope(rq_settings.resolved_database_url) as session:  # a second pass adds nothing
        assert reap(session, runner, requeue_grace_s=0.0).reenqueued == []

    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.output()
    assert [load(rq_settings, i).state for i in [*ids, waiting]] == [JobState.succeeded] * 4
    assert sorted(m[3] for m in tj.marks(marker)) == ["0", "1", "2", "w"]


def test_stale_job_out_of_attempts_fails_with_its_dependents(job_settings: Settings) -> None:
    job_id = submit(job_settings, "test.sleep", {"seconds": 1}, max_attempts=1)
    after = submit(job_settings, "test.echo", {}, depends_on=[job_id])
    url = job_settings.resolved_database_url
    with session_scope(url) as session:
        assert service.claim(session, job_id, "doomed-worker") is not None
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=5))
        )
    with session_scope(url) as session:
        report = reap(session, get_runner(job_settings, background=False), stale_after_s=2.0)
    assert report.failed == [job_id] and report.requeued == []
    job = load(job_settings, job_id)
    assert job.state == JobState.failed and job.error.startswith("worker lost: no heartbeat")  # type: ignore[union-attr]
    assert load(job_settings, after).error == f"dependency {job_id} failed"


def test_reaper_releases_dependents_stuck_after_a_crash(job_settings: Settings) -> None:
    first = submit(job_settings, "test.echo", {})
    second = submit(job_settings, "test.echo", {}, depends_on=[first])
    with session_scope(job_settings.resolved_database_url) as session:  # a crash between two commits
        session.execute(update(Job).where(Job.id == first).values(state=JobState.succeeded))
    runner = get_runner(job_settings, background=False)
    assert runner.run_until_idle() == 0  # stuck: nothing released it
    time.sleep(0.01)
    with session_scope(job_settings.resolved_database_url) as session:
        assert reap(session, runner).released == [second]
    assert runner.run_until_idle() == 1
    assert load(job_settings, second).state == JobState.succeeded
