"""Typed settings for every itloop process, read from ``ITLOOP_*`` environment variables.

One ``Settings`` object, reached through the cached :func:`get_settings`, so that
tests can clear the cache and override values without import-time side effects.
With nothing set, itloop runs embedded: SQLite and a local object store under
``ITLOOP_DATA_DIR`` and an in-process job runner.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from itloop.night_params import NightParams, describe_errors

DEV_TOKEN_PEPPER = "itloop-development-pepper"
MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 10


def secret_weakness(value: str) -> str | None:
    """Why ``value`` is too weak to be a production secret, or None.

    A length and variety floor, not an entropy estimate: it refuses what people type by hand
    (``x``, ``changeme``, ``aaaa...``) and passes what the docs tell them to generate
    (``openssl rand -hex 32``: 64 characters; ``python -c "import secrets;
    print(secrets.token_urlsafe(32))"``: 43).
    """
    if len(value) < MIN_SECRET_CHARS:
        return f"has {len(value)} characters; use at least {MIN_SECRET_CHARS} random characters"
    if len(set(value)) < MIN_SECRET_DISTINCT:
        return f"has only {len(set(value))} distinct characters; use a random value"
    return None


def production_problems(settings: Settings) -> list[str]:
    """Everything that makes ``settings`` unfit for ``ITLOOP_ENV=production``, in words (no values)."""
    problems = []
    if settings.token_pepper == DEV_TOKEN_PEPPER:
        problems.append("ITLOOP_TOKEN_PEPPER is the development value; set a secret (openssl rand -hex 32)")
    elif (why := secret_weakness(settings.token_pepper)) is not None:
        problems.append(f"ITLOOP_TOKEN_PEPPER {why} (openssl rand -hex 32)")
    if settings.bootstrap_admin_token and (why := secret_weakness(settings.bootstrap_admin_token)):
        problems.append(f"ITLOOP_BOOTSTRAP_ADMIN_TOKEN {why}")
    if settings.is_sqlite:
        problems.append(
            "the database is SQLite (the embedded default); set ITLOOP_DATABASE_URL to PostgreSQL "
            "(postgresql+psycopg://user:password@host/itloop)"
        )
    if not settings.redis_url:
        problems.append(
            "ITLOOP_REDIS_URL is unset, which runs jobs in-process; set it (redis://host:6379/0) "
            "and run `itloop worker` processes"
        )
    return problems


def describe_settings_error(exc: ValidationError) -> str:
    """A settings error as lines a person can act on: no traceback and no values (they may be secrets)."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err.get("loc", ()))
        lines.append(f"ITLOOP_{loc.upper()}: {msg}" if loc else msg)
    return "invalid settings: " + "\n".join(lines)


class Settings(BaseSettings):
    """All configuration; environment variables win over ``.env``, which wins over defaults."""

    model_config = SettingsConfigDict(env_prefix="ITLOOP_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("./itloop-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/itloop.db"
    )
    redis_url: str | None = Field(
        default=None, description="redis://... selects RQ; unset runs jobs in-process"
    )
    store_url: str | None = Field(
        default=None, description="object store: file:///path or s3://bucket/prefix; default <data_dir>/store"
    )
    image_store: Path | None = Field(
        default=None, description="local image-store folder (shortcut for a file:// store_url)"
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    token_pepper: str = Field(default=DEV_TOKEN_PEPPER, description="HMAC key for stored token hashes")
    bootstrap_admin_token: str | None = Field(
        default=None, description="if set, `itloop db upgrade` ensures an admin with this token exists"
    )
    auth_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description="how long an API process trusts a checked token before asking the database "
        "again (the longest a revocation from another process takes to apply); 0 checks every request",
    )
    auth_failures_per_minute: int = Field(
        default=20,
        ge=1,
        description="failed token checks one client address may make per minute (per API process) "
        "before it is answered 429 until the minute has passed",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        description="largest request body of a file-upload route (spike files, image sets)",
    )
    max_json_bytes: int = Field(
        default=4 * 1024 * 1024,
        description="largest request body of every other route (JSON and NDJSON bodies)",
    )
    response_window_ms: tuple[float, float] = (70.0, 170.0)
    queue_name: str = "itloop"
    gpu_queue_name: str = "itloop-gpu"
    job_timeout_s: int = 6 * 3600
    job_max_attempts: int = 3
    rig_time: str = Field(default="08:00", description="local time (HH:MM) by which the night must publish")
    night_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="lab-wide night parameters (JSON), under those a night is started with; "
        "checked at start-up (an unknown key or impossible value refuses to start)",
    )
    auto_night: bool = Field(
        default=True,
        description="whether completing a recording session starts its night with the lab defaults",
    )
    public_base_url: str = ""
    log_level: str = "INFO"

    @field_validator("night_defaults")
    @classmethod
    def _check_night_defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            NightParams.model_validate(value)
        except ValidationError as exc:
            raise ValueError(describe_errors(exc)) from None
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        problems = production_problems(self) if self.env == "production" else []
        if problems:
            raise ValueError("ITLOOP_ENV=production refuses to start:\n  - " + "\n  - ".join(problems))
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'itloop.db').resolve()}"

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        folder = self.image_store if self.image_store is not None else self.data_dir / "store"
        return Path(folder).resolve().as_uri()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        """Create the data folder lazily: only processes that write need it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_device(name: str | None = None) -> str:
    """Pick the torch device without touching CUDA unless asked: called inside jobs, never at import."""
    name = name or get_settings().device
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
