"""Scale-out: several RQ worker processes share one PostgreSQL, one Redis and one night.

The real nightly pipeline (worker.stages) runs on a tiny simulated lab twice, from the
same seeded content in two fresh databases: once with one worker, once with a
CPU-only worker plus two GPU-queue workers. The second night's synthesis shards must
spread over both GPU workers, no shard may run twice, the CPU-only worker must never
take a GPU-queue job, and the batch must be exactly the one a single worker makes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from itloop.settings import Settings
from itloop.storage import get_store
from jobs import state as jobstate
from jobs.config import get_worker_config
from jobs.queue import reset_runners
from server.batches import service as batches
from server.db.engine import get_engine, session_scope
from server.jobs.tables import Job, JobState, Night
from tests.conftest import BACKENDS, make_settings, new_database
from tests.factories import (  # night_jobs reads lab.url only
    night_jobs,
    record_simulated_day,
    seed_lab,
    wait_for,
)
from tests.worker.conftest import ITLOOP_CLI, WORKER_ENV, WorkerProcess

# Whole nights on subprocess workers (about 90 s each here): left out of `make test-fast`.
pytestmark = pytest.mark.slow

N_SITES = 4
NIGHT: dict[str, Any] = {
    "candidates": ["tiny_cnn"],
    "epsilons": [0.5],
    "clean_per_site": 1,
    "targeted_epsilons": [],
    "random_per_site": 0,
    "restarts": 2,
    "budget": 8,
    "repeats": 2,
    "n_boot": 30,
    "model_sensitivity_images": 1,
    "model_sensitivity_budget": 8,
    "sites_per_shard": 1,
    "ceiling_threshold": -1.0,
    "pair_separation_s": 30,
}
# Real heartbeats and a reaper every second, but a stale threshold that a busy 2-core box
# cannot trip by accident: a job re-run here would be a scheduling bug, not a slow beat.
ENV = {
    **WORKER_ENV,
    "ITLOOP_HEARTBEAT_S": "0.5",
    "ITLOOP_STALE_AFTER_S": "60",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CPU, GPU = "itloop", "itloop-gpu"
TERMINAL = (JobState.succeeded, JobState.failed, JobState.cancelled)


@dataclass
class Lab:
    settings: Settings
    rig_id: str
    session_id: str

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url


@pytest.fixture
def pg_lab(tmp_path: Path, redis_url: str) -> Iterator[Callable[[str], Lab]]:
    """``pg_lab(name)``: a fresh migrated database, store and data folder with the seeded lab and day 0."""
    backend = "postgresql" if "postgresql" in BACKENDS else BACKENDS[0]
    cleanups = []

    def _make(name: str) -> Lab:
        url, cleanup = new_database(backend, tmp_path / name, f"mw_{name}_{uuid.uuid4().hex[:8]}")
        cleanups.append((url, cleanup))
        settings = make_settings(url, tmp_path / name, redis_url=redis_url)
        return seed_lab_with_day0(settings)

    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    yield _make
    reset_runners()
    get_worker_config.cache_clear()
    for url, cleanup in cleanups:
        get_engine(url).dispose()
        cleanup()


def seed_lab_with_day0(settings: Settings, seed: int = 0) -> Lab:
    """The seeded lab of :func:`tests.factories.seed_lab` and its day-0 spikes: same seed, same lab."""
    sim = seed_lab(settings, name="mw", n_sites=N_SITES, n_clean=8, n_reference=4, repeats=2, seed=seed)
    session_id = f"{sim.subject}-day0"
    with session_scope(sim.url) as session:
        record_simulated_day(
            session,
            get_store(settings.resolved_store_url),
            sim,
            batch_id=sim.day0_batch_id,
            session_id=session_id,
            day=0,
            rng=sim.rng,
        )
    return Lab(settings, sim.rig_id, session_id)


def start_night(lab: Lab, params: dict[str, Any] | None = None) -> int:
    from worker.night import start_night as start

    with session_scope(lab.url) as session:
        jobstate.bind(session, lab.settings)
        return start(session, lab.settings, session_id=lab.session_id, params={**NIGHT, **(params or {})}).id


def night_state(lab: Lab, night_id: int) -> tuple[str, str | None, int | None]:
    with session_scope(lab.url) as session:
        night = session.get(Night, night_id)
        assert night is not None
        return night.state, night.error, night.batch_pk


def worker(
    lab: Lab, log: Path, *queues: str, monkeypatch: pytest.MonkeyPatch, forking: bool = False
) -> WorkerProcess:
    """A long-running (not burst) RQ worker on ``queues`` for ``lab``'s database, Redis and store.

    ``forking`` starts exactly what ``docker-compose.yml`` runs: ``itloop worker --queue ...``,
    which forks a work horse per job; otherwise jobs run in the worker process.
    """
    s = lab.settings
    for key, value in {
        **ENV,
        "ITLOOP_DATABASE_URL": s.resolved_database_url,
        "ITLOOP_REDIS_URL": s.redis_url or "",
        "ITLOOP_STORE_URL": s.resolved_store_url,
        "ITLOOP_DATA_DIR": str(s.data_dir),
        "ITLOOP_DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(key, value)
    args = [] if forking else ["--simple"]  # --simple: jobs.worker names the worker's own pid
    for q in queues:
        args += ["--queue", q]
    if forking:
        return WorkerProcess(log, *args, command=[ITLOOP_CLI, "worker"])
    return WorkerProcess(log, *args)


def run_to_end(lab: Lab, night_id: int, workers: list[WorkerProcess], timeout_s: float = 120) -> None:
    def done() -> bool:
        for w in workers:
            assert w.proc.poll() is None, f"worker exited early:\n{w.output()}"
        return night_state(lab, night_id)[0] in TERMINAL

    try:
        wait_for(done, timeout_s=timeout_s, what=f"night {night_id}")
    finally:
        for w in workers:
            w.kill()
    state, error, _ = night_state(lab, night_id)
    logs = "\n".join(w.output()[-3000:] for w in workers)
    assert state == JobState.succeeded, f"night {night_id} {state}: {error}\n{logs}"


def batch_signature(lab: Lab, night_id: int) -> tuple[list[str], list[str]]:
    """(sorted image hashes, image hash of each presentation in seq order): what the rig will show."""
    from server.batches.tables import Batch

    with session_scope(lab.url) as session:
        batch_pk = night_state(lab, night_id)[2]
        batch = session.get(Batch, batch_pk)
        assert batch is not None
        manifest = batches.get_manifest(session=session, batch_id=batch.batch_id)
    shas = sorted(im["sha256"] for im in manifest["images"])
    seq = [s["image_sha256"] for s in sorted(manifest["sequence"], key=lambda s: s["seq"])]
    return shas, seq


def pid_of(job: Job) -> int:
    assert job.worker, f"job {job.id} ({job.kind}) has no worker"
    return int(job.worker.split(":")[1])  # host:pid:thread


def test_workers_share_a_night_and_make_the_batch_one_worker_makes(
    pg_lab: Callable[[str], Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    get_worker_config.cache_clear()
    # One worker, both queues: the reference batch.
    alone = pg_lab("one")
    night_alone = start_night(alone)
    solo = worker(alone, tmp_path / "solo.log", GPU, CPU, monkeypatch=monkeypatch)
    run_to_end(alone, night_alone, [solo])
    expected = batch_signature(alone, night_alone)

    # Same lab, fresh database: a CPU-only worker first. It runs the CPU stage and never
    # touches the refit, which waits on the GPU queue until a GPU worker comes.
    many = pg_lab("many")
    night = start_night(many)
    cpu = worker(many, tmp_path / "cpu.log", CPU, monkeypatch=monkeypatch)

    def responses_done() -> bool:
        assert cpu.proc.poll() is None, cpu.output()
        return any(
            j.kind == "night.responses" and j.state == JobState.succeeded for j in night_jobs(many, night)
        )

    wait_for(responses_done, timeout_s=60, what="night.responses on the CPU worker")
    time.sleep(2.0)  # two reaper periods: plenty of chances to take the wrong job
    refits = [j for j in night_jobs(many, night) if j.kind == "night.refit"]
    assert refits and all(j.queue == GPU for j in refits)
    assert [(j.state, j.attempts, j.worker) for j in refits] == [(JobState.queued, 0, None)] * len(refits)

    gpus = [worker(many, tmp_path / f"gpu{i}.log", GPU, CPU, monkeypatch=monkeypatch) for i in range(2)]
    run_to_end(many, night, [cpu, *gpus])
    rows = night_jobs(many, night)
    gpu_pids = {w.proc.pid for w in gpus}

    # Queue routing: every GPU-queue job ran on a GPU worker; the CPU worker did CPU work.
    assert {j.kind for j in rows if j.queue == GPU} == {"night.refit", "night.synthesize", "night.analyze"}
    assert all(pid_of(j) in gpu_pids for j in rows if j.queue == GPU)
    assert {pid_of(j) for j in rows} <= gpu_pids | {cpu.proc.pid}
    assert pid_of(next(j for j in rows if j.kind == "night.responses")) == cpu.proc.pid

    # The shards spread over both GPU workers, and each ran exactly once.
    shards = [j for j in rows if j.kind == "night.synthesize"]
    assert len(shards) == N_SITES  # sites_per_shard = 1
    assert {pid_of(j) for j in shards} == gpu_pids, [j.worker for j in shards]
    for j in rows:
        assert (j.state, j.attempts) == (JobState.succeeded, 1), (j.kind, j.state, j.attempts, j.error)
        assert j.log_tail.count("--- attempt") == 1, j.log_tail[-500:]
    sites = sorted(s for j in shards for s in (j.result or {})["sites"])
    assert sites == sorted(f"mw-A-{i:03d}" for i in range(N_SITES))

    # Together they made exactly the batch one worker makes alone.
    got = batch_signature(many, night)
    assert got[0] == expected[0], "different images"
    assert got[1] == expected[1], "same images, different presentation order"


def test_the_deployed_forking_worker_runs_a_whole_night(
    pg_lab: Callable[[str], Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose command itself: ``itloop worker`` forks a horse per job, after the parent has
    used the database (reaper, heartbeats). Every job must run on its own connections; a horse
    that reused the parent's (``prepared statement "_pg3_1" already exists`` on PostgreSQL) failed
    every night. Two forking workers, both queues, one night from start to published batch."""
    get_worker_config.cache_clear()
    lab = pg_lab("one")
    night = start_night(lab)
    workers = [
        worker(lab, tmp_path / f"fork{i}.log", GPU, CPU, monkeypatch=monkeypatch, forking=True)
        for i in range(2)
    ]
    run_to_end(lab, night, workers, timeout_s=240)
    rows = night_jobs(lab, night)
    parents = {w.proc.pid for w in workers}
    # Each job ran in a forked horse (not in a worker's own process), exactly once, cleanly.
    assert all(pid_of(j) not in parents for j in rows), [j.worker for j in rows]
    for j in rows:
        assert (j.state, j.attempts) == (JobState.succeeded, 1), (j.kind, j.state, j.attempts, j.error)
    logs = "".join(w.output() for w in workers)
    assert "DuplicatePreparedStatement" not in logs and "already exists" not in logs
