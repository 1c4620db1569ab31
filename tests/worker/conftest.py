"""Worker test fixtures: short heartbeats, test-only job kinds, subprocess workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import text

import tests.worker.jobs_for_tests  # noqa: F401 - registers the test.* kinds in this process
from itloop.settings import Settings
from jobs.config import get_worker_config
from jobs.queue import reset_runners
from server.db.engine import get_engine, session_scope
from tests.conftest import BACKENDS, _install_settings, make_settings, new_database

ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {
    "ITLOOP_HEARTBEAT_S": "0.2",
    "ITLOOP_STALE_AFTER_S": "1.0",
    "ITLOOP_REAP_EVERY_S": "1",
    "ITLOOP_REQUEUE_GRACE_S": "0",
    "ITLOOP_PROGRESS_EVERY_S": "0.1",
    "ITLOOP_INPROCESS_BACKGROUND": "false",
    "ITLOOP_EXTRA_JOB_MODULES": "tests.worker.jobs_for_tests",
    "ITLOOP_LOG_LEVEL": "INFO",
}


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    get_worker_config.cache_clear()
    reset_runners()
    yield
    reset_runners()
    get_worker_config.cache_clear()


@pytest.fixture(scope="module")
def worker_db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per test module and backend (creating one per test is slow on PostgreSQL)."""
    url, cleanup = new_database(
        backend, tmp_path_factory.mktemp("workerdb"), f"worker_{uuid.uuid4().hex[:8]}"
    )
    yield url
    get_engine(url).dispose()
    cleanup()


@pytest.fixture
def job_db_url(worker_db_url: str) -> str:
    """The module's database, emptied of what the worker tests write: committed rows that workers see."""
    _empty(worker_db_url)
    return worker_db_url


def _empty(url: str) -> None:
    with session_scope(url) as session:
        for table in ("jobs", "nights", "recording_sessions", "subjects"):
            session.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def job_settings(
    job_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_env: None
) -> Settings:
    """Settings on a committed database, in-process runner (no Redis)."""
    s = make_settings(job_db_url, tmp_path)
    _install_settings(s, monkeypatch)
    return s


@pytest.fixture(scope="module")
def rq_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RQ deployments run on PostgreSQL, so the subprocess tests do (SQLite if it is all we test)."""
    backend = "postgresql" if "postgresql" in BACKENDS else BACKENDS[0]
    url, cleanup = new_database(backend, tmp_path_factory.mktemp("rqdb"), f"rq_{uuid.uuid4().hex[:8]}")
    yield url
    get_engine(url).dispose()
    cleanup()


@pytest.fixture
def rq_settings(
    rq_db_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_env: None
) -> Settings:
    """Settings on a committed PostgreSQL database and the test Redis: jobs go through RQ."""
    _empty(rq_db_url)
    s = make_settings(rq_db_url, tmp_path, redis_url=redis_url)
    _install_settings(s, monkeypatch)
    return s


ITLOOP_CLI = str(Path(sys.executable).with_name("itloop"))


class WorkerProcess:
    """A worker in its own process group, with its output in a log file.

    By default ``python -m jobs.rq_entry ARGS``; ``command`` replaces that, e.g. with the
    ``itloop worker`` that ``docker-compose.yml`` runs (forking, the default).

    Every one started is killed when its test ends (``pytest_runtest_call`` below), passed or
    failed: a worker left running would go on taking the next test's jobs off the shared test
    Redis and drop them, unclaimable in its own database.
    """

    started: ClassVar[list[WorkerProcess]] = []

    def __init__(self, log_path: Path, *args: str, command: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in wait()/kill(
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "jobs.rq_entry"]), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        WorkerProcess.started.append(self)

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not finish; log:\n{self.output()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        """kill -9 the worker's group and its work horse, which RQ puts in a group of its own."""
        if self.proc.poll() is None:
            horses = _children(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in horses:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def parent_pid(pid: int) -> int:
    """The parent of process ``pid`` (Linux ``/proc``; the name in parentheses may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if parent_pid(int(proc.name)) == pid:
                children.append(int(proc.name))
    return children


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """No worker outlives its test: killed as the test body ends, before its databases are dropped."""
    yield
    while WorkerProcess.started:
        WorkerProcess.started.pop().kill()


@pytest.fixture
def start_worker(tmp_path: Path) -> Callable[..., WorkerProcess]:
    """Start ``python -m jobs.rq_entry ARGS``; killed when the test ends, like every WorkerProcess."""
    started = 0

    def _start(*args: str) -> WorkerProcess:
        nonlocal started
        started += 1
        return WorkerProcess(tmp_path / f"worker-{started - 1}.log", *args)

    return _start
