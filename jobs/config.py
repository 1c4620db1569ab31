"""Worker tunables, read from ``ITLOOP_*`` environment variables.

They live here, not in :class:`itloop.settings.Settings`, because only worker
processes (and tests that drive them) care about them. Tests shorten heartbeats
and stale thresholds through the environment, so a subprocess worker sees the
same values as the test that started it.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerConfig(BaseSettings):
    """Heartbeat, recovery and polling intervals (seconds) and job-module discovery."""

    model_config = SettingsConfigDict(env_prefix="ITLOOP_", env_file=".env", extra="ignore")

    heartbeat_s: float = Field(default=5.0, gt=0, description="a running job's heartbeat interval")
    stale_after_s: float = Field(
        default=60.0, gt=0, description="a running job without a heartbeat for this long is presumed dead"
    )
    reap_every_s: float = Field(
        default=30.0,
        gt=0,
        description="how often a worker, and `itloop serve` on the embedded default, runs the reaper",
    )
    requeue_grace_s: float = Field(
        default=5.0, ge=0, description="queued jobs older than this and absent from Redis are re-enqueued"
    )
    liveness_s: float = Field(
        default=5.0,
        gt=0,
        description="how often a worker process (and an embedded server) records in the database that it "
        "is alive; /health counts those seen within ITLOOP_STALE_AFTER_S",
    )
    redis_retry_max_s: float = Field(
        default=30.0,
        gt=0,
        description="RQ workers: longest wait between reconnection attempts while Redis is unreachable "
        "(the wait starts at 1 s and doubles)",
    )
    poll_s: float = Field(default=1.0, gt=0, description="DB-polling worker: sleep when nothing is queued")
    progress_every_s: float = Field(default=1.0, ge=0, description="throttle for progress writes")
    log_tail_chars: int = Field(default=16_000, ge=1000, description="bound on a job's stored log tail")
    inprocess_background: bool = Field(
        default=True, description="embedded mode: run submitted jobs in a background thread pool"
    )
    inprocess_threads: int = Field(default=1, ge=1, description="embedded mode: background threads")
    job_modules: str = Field(
        default="worker.night,worker.stages",
        description="comma-separated modules that register the night's job kinds (imported by name, "
        "so the job package never imports the night)",
    )
    extra_job_modules: str = Field(
        default="", description="comma-separated modules that register extra job kinds (tests, plugins)"
    )
    night_candidates: list[str] = Field(
        default=["resnet50", "resnet50_l2_eps3"],
        description="candidate models refit each night unless the night's params name others",
    )
    fallback_candidates: list[str] = Field(
        default=["smooth16", "vone_energy_blend"],
        description="checkpoint-free candidates a night uses instead of the default ones when their "
        "checkpoint files are missing (only when neither the night nor the lab named candidates)",
    )


@lru_cache(maxsize=1)
def get_worker_config() -> WorkerConfig:
    return WorkerConfig()
