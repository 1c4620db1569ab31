"""Foundation: migrations, constraints, auth, settings precedence, health, error format."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from itloop.settings import Settings
from server.auth import service
from server.db import migrate
from server.db.all_tables import metadata
from server.images.tables import Image
from server.lab.tables import Array, Site, Subject
from tests.conftest import bearer, new_database


def test_migrations_upgrade_and_downgrade(backend: str, tmp_path: Path) -> None:
    url, cleanup = new_database(backend, tmp_path, "updown")
    try:
        from server.db.engine import get_engine

        names = set(inspect(get_engine(url)).get_table_names())
        assert set(metadata.tables) <= names
        migrate.check(url)  # no drift between ORM and migrations
        migrate.downgrade(url, "base")
        get_engine.cache_clear()
        assert set(inspect(get_engine(url)).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(url)
        assert set(metadata.tables) <= set(inspect(get_engine(url)).get_table_names())
        get_engine(url).dispose()
    finally:
        cleanup()


def test_image_hash_is_unique(db_session: Session) -> None:
    db_session.add(Image(sha256="a" * 64, width=4, height=4, n_bytes=10))
    db_session.flush()
    db_session.add(Image(sha256="a" * 64, width=4, height=4, n_bytes=10))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_site_id_is_unique_and_fk_enforced(db_session: Session) -> None:
    subject = Subject(name="m1")
    db_session.add(subject)
    db_session.flush()
    array = Array(subject_id=subject.id, name="A")
    db_session.add(array)
    db_session.flush()
    db_session.add(Site(site_id="s1", array_id=array.id))
    db_session.flush()
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(Site(site_id="s1", array_id=array.id))
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(Site(site_id="s2", array_id=987654))


def test_presentation_event_unique_per_batch(db_session: Session) -> None:
    from server.batches.tables import Batch
    from server.lab.tables import Rig
    from server.recordings.tables import RigEvent

    rig = Rig(rig_id="rig-x")
    db_session.add(rig)
    db_session.flush()
    batch = Batch(batch_id="b1", rig_pk=rig.id)
    db_session.add(batch)
    db_session.flush()
    db_session.add(RigEvent(batch_pk=batch.id, event_id="e1", image_sha256="a" * 64, onset_s=1.0))
    db_session.flush()
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(RigEvent(batch_pk=batch.id, event_id="e1", image_sha256="a" * 64, onset_s=2.0))


def test_no_token_is_401_with_json(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/me")
    assert r.status_code == 401
    assert "token" in r.json()["detail"]


def test_wrong_token_is_401(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/me", headers=bearer("itl_not-a-real-token-at-all"))
    assert r.status_code == 401


def test_wrong_role_is_403_and_admin_may(client, auth) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "newbie", "role": "viewer"}
    r = client.post("/api/v1/users", json=body, headers=auth("viewer"))
    assert r.status_code == 403
    assert "admin" in r.json()["detail"]
    r = client.post("/api/v1/users", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "viewer"


@pytest.mark.parametrize("ttl_s", [0.3, 0.0])
def test_revoked_token_is_401(client, db_session: Session, ttl_s: float) -> None:  # type: ignore[no-untyped-def]
    """A revocation from outside the API (the CLI, another worker) applies within the cache TTL;
    with the cache off (TTL 0), at once."""
    from server.auth.cache import AuthCache

    client.app.state.auth_cache = AuthCache(ttl_s=ttl_s)
    user = service.create_user(session=db_session, name="temp", role="viewer")
    token = service.create_token(session=db_session, user=user)
    db_session.commit()
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert len(client.app.state.auth_cache) == (1 if ttl_s else 0)
    assert service.revoke_token(session=db_session, prefix=token[:8]) == 1
    db_session.commit()
    time.sleep(ttl_s + 0.05 if ttl_s else 0)
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


def test_revocation_through_the_api_applies_at_once(client, db_session: Session, auth) -> None:  # type: ignore[no-untyped-def]
    user = service.create_user(session=db_session, name="temp2", role="rig")
    token = service.create_token(session=db_session, user=user)
    db_session.commit()
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200  # now cached
    r = client.delete(f"/api/v1/tokens/{token[:8]}", headers=auth("admin"))
    assert r.status_code == 200 and r.json() == {"revoked": 1}
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


def test_auth_cache_expires_and_stays_bounded() -> None:
    from datetime import UTC, datetime

    from server.auth.cache import AuthCache, Principal

    who = Principal(id=1, name="r", role="rig", disabled=False, created_at=datetime.now(UTC))
    cache = AuthCache(ttl_s=0.05, max_entries=3)
    cache.put("a", who)
    assert cache.get("a") == who and cache.get("b") is None
    time.sleep(0.06)
    assert cache.get("a") is None
    for key in "bcde":
        cache.put(key, who)
    assert len(cache) <= 3 and cache.get("e") == who
    with pytest.raises(ValueError):
        AuthCache(ttl_s=-1)


def test_tokens_are_stored_hashed(db_session: Session) -> None:
    from server.auth.tables import ApiToken

    user = service.create_user(session=db_session, name="h", role="viewer")
    token = service.create_token(session=db_session, user=user)
    row = db_session.query(ApiToken).filter_by(user_id=user.id).one()
    assert token not in row.token_hash and row.token_hash == service.hash_token(token)


def test_validation_errors_are_json(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/users", json={"name": "x", "role": "pope"}, headers=auth("admin"))
    assert r.status_code == 422
    assert "role" in r.json()["detail"]


def test_unknown_route_is_json_404(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/nope", headers=auth("admin"))
    assert r.status_code == 404 and "detail" in r.json()


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("ITLOOP_DATABASE_URL", "ITLOOP_REDIS_URL", "ITLOOP_DEVICE", "ITLOOP_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    defaults = Settings()
    assert defaults.redis_url is None and defaults.device == "auto"
    assert defaults.resolved_database_url.startswith("sqlite:///")
    assert defaults.resolved_database_url.endswith("itloop-data/itloop.db")
    (tmp_path / ".env").write_text("ITLOOP_DEVICE=cpu\nITLOOP_REDIS_URL=redis://from-dotenv:6379/0\n")
    from_file = Settings()
    assert from_file.device == "cpu" and from_file.redis_url == "redis://from-dotenv:6379/0"
    monkeypatch.setenv("ITLOOP_DEVICE", "cuda:1")
    assert Settings().device == "cuda:1"  # environment beats .env
    assert Settings(device="cuda:0").device == "cuda:0"  # explicit beats environment


def test_production_refuses_default_pepper() -> None:
    with pytest.raises(ValueError, match="TOKEN_PEPPER"):
        Settings(env="production")
    Settings(
        env="production",
        token_pepper="3f9c1a7e5b2d8f4c6a0e9b1d7c3f5a2e8b4d6c0f1a3e5b7d9c2f4a6e8b0d1c3f",
        database_url="postgresql+psycopg://itloop@db/itloop",
        redis_url="redis://redis:6379/0",
    )  # the rest of what production refuses: tests/reliability/test_production.py


def test_health_ok(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json()["database"]["ok"] is True


def test_health_reports_real_redis(tmp_path: Path, redis_url: str) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app

    s = Settings(env="test", data_dir=tmp_path, redis_url=redis_url)
    with TestClient(create_app(s)) as c:
        body = c.get("/api/v1/health").json()
    assert body["queue"] == {"ok": True, "backend": "redis"}


def test_me_reports_a_utc_timestamp(client, auth) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    for _ in range(2):  # the first answer comes from the database, the second from the token cache
        r = client.get("/api/v1/me", headers=auth("viewer"))
        assert r.status_code == 200
        created = datetime.fromisoformat(r.json()["created_at"])
        assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
