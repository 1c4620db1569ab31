"""Shared fixtures: real PostgreSQL, real SQLite, real Redis. No mocks of either.

Database tests are parametrised over the backends in ``ITLOOP_TEST_BACKENDS``
(default ``sqlite,postgresql``). Each backend gets one freshly created, migrated
database per test session; each test runs inside a transaction that is rolled
back (``db_session``). Tests that need committed data seen by other processes
(workers, subprocesses) use ``fresh_db_url``, a brand-new database per test.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the suite runs next to subprocess workers on a 2-core
# machine, and oversubscribed OpenMP threads spin and slow everything down many-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from itloop.settings import Settings, get_settings
from server.db import migrate
from server.db.engine import get_engine
from server.db.provision import create_pg_database, drop_pg_database

REDIS_TEST_URL = os.environ.get("ITLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
BACKENDS = [b.strip() for b in os.environ.get("ITLOOP_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
RUN_ID = uuid.uuid4().hex[:8]


def new_database(backend: str, folder: Path, tag: str) -> tuple[str, Callable[[], None]]:
    """A new, migrated database; returns its URL and a cleanup function."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / f'{tag}.db'}"
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
    elif backend == "postgresql":
        name = f"itloop_test_{RUN_ID}_{tag}"[:63]
        url = create_pg_database(name)
        cleanup = lambda: drop_pg_database(name)  # noqa: E731
    else:
        raise ValueError(f"unknown test backend {backend!r}")
    migrate.upgrade(url)
    return url, cleanup


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def migrated_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, cleanup = new_database(backend, tmp_path_factory.mktemp("db"), f"shared_{backend}")
    yield url
    get_engine(url).dispose()
    cleanup()


@pytest.fixture
def fresh_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A brand-new migrated database for tests whose data must be committed and shared."""
    tag = uuid.uuid4().hex[:10]
    url, cleanup = new_database(backend, tmp_path, f"fresh_{tag}")
    yield url
    get_engine(url).dispose()
    cleanup()


@pytest.fixture
def db_session(migrated_url: str) -> Iterator[Session]:
    """A session whose every commit is a savepoint inside one transaction rolled back at the end."""
    engine = get_engine(migrated_url)
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        if outer.is_active:
            outer.rollback()
        connection.close()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        data_dir=data_dir,
        store_url=(data_dir / "store").resolve().as_uri(),
        # no wall-clock deadline unless a test asks for one; no failed-login limit (tests send
        # many bogus tokens on purpose) unless a test asks for one; no night started by completing
        # a session (it would run in the in-process runner's threads on their own connections,
        # which cannot see a test's rolled-back transaction) unless a test asks for one
        **{"rig_time": "", "auth_failures_per_minute": 1_000_000, "auto_night": False, **overrides},  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings bound to the shared test database; also what get_settings() returns during the test."""
    s = make_settings(migrated_url, tmp_path)
    _install_settings(s, monkeypatch)
    yield s
    get_settings.cache_clear()


def _install_settings(s: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import itloop.settings as settings_module
    from itloop.storage import get_store

    get_settings.cache_clear()
    get_store.cache_clear()
    monkeypatch.setattr(settings_module, "get_settings", lambda: s)
    for var in ("DATABASE_URL", "REDIS_URL", "STORE_URL", "DATA_DIR", "IMAGE_STORE"):
        monkeypatch.delenv(f"ITLOOP_{var}", raising=False)
    monkeypatch.setenv("ITLOOP_DATABASE_URL", s.resolved_database_url)
    monkeypatch.setenv("ITLOOP_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("ITLOOP_STORE_URL", s.resolved_store_url)
    if s.redis_url:
        monkeypatch.setenv("ITLOOP_REDIS_URL", s.redis_url)


@pytest.fixture
def client(settings: Settings, db_session: Session) -> Iterator[object]:
    """A TestClient whose requests all run in the test's rolled-back transaction."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.deps import get_db

    app = create_app(settings)

    def _db() -> Iterator[Session]:
        try:
            yield db_session
            db_session.commit()
        except BaseException:
            db_session.rollback()
            raise

    app.dependency_overrides[get_db] = _db
    # The auth gate (server.auth.gate) looks tokens up before a body is read, outside any route:
    # point it at the test's transaction too, where the test's tokens live.
    from server.auth.service import principal_for_hash

    app.state.principal_lookup = lambda token_hash: principal_for_hash(
        session=db_session, token_hash=token_hash
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


ROLES = ("admin", "experimenter", "viewer", "rig")


@pytest.fixture
def tokens(db_session: Session) -> dict[str, str]:
    """One user and token per role, in the test transaction."""
    from server.auth import service

    out = {}
    for role in ROLES:
        user = service.create_user(session=db_session, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role)
        out[role] = service.create_token(session=db_session, user=user)
    db_session.commit()
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(tokens: dict[str, str]) -> Callable[[str], dict[str, str]]:
    """``auth("rig")`` gives the headers of that role's token."""
    return lambda role: bearer(tokens[role])


@pytest.fixture
def rig_auth(db_session: Session) -> Callable[[str], dict[str, str]]:
    """``rig_auth(rig_id)`` gives the headers of a token of that rig's own account.

    A rig token acts only for the rig named like its user (``server.batches.service.authorize_rig``),
    so each rig gets a user named after its ``rig_id``, made on first use in the test transaction.
    """
    from server.auth import service

    made: dict[str, str] = {}

    def _headers(rig_id: str) -> dict[str, str]:
        if rig_id not in made:
            user = service.create_user(session=db_session, name=rig_id, role="rig")
            made[rig_id] = service.create_token(session=db_session, user=user)
            db_session.commit()
        return bearer(made[rig_id])

    return _headers


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis database reserved for tests, emptied before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()
