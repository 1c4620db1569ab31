"""Token revocation against a real two-worker uvicorn: each worker caches checked tokens.

The cache (``ITLOOP_AUTH_CACHE_SECONDS``) may keep a revoked token working in a worker
for at most that long; after it, every worker must refuse it, and a fresh token must work
at once (failed lookups are never cached).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from demo.server import serve_in_subprocess
from itloop.settings import Settings
from server.auth import service
from server.db.engine import session_scope
from tests.conftest import make_settings

TTL_S = 0.5


def _serve(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "ITLOOP_ENV": "test",
        "ITLOOP_DATABASE_URL": settings.resolved_database_url,
        "ITLOOP_STORE_URL": settings.resolved_store_url,
        "ITLOOP_DATA_DIR": str(settings.data_dir),
        "ITLOOP_AUTH_CACHE_SECONDS": str(TTL_S),
        "ITLOOP_LOG_LEVEL": "WARNING",
    }
    return serve_in_subprocess(env, workers=2)


def test_revocation_reaches_every_worker_within_the_cache_ttl(fresh_db_url: str, tmp_path: Path) -> None:
    settings = make_settings(fresh_db_url, tmp_path / "data")
    with session_scope(fresh_db_url) as db:
        user = service.create_user(session=db, name="rig-7", role="rig")
        token = service.create_token(session=db, user=user)
    proc, base = _serve(settings)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(20):  # new connections each time, so both workers see (and cache) it
            assert httpx.get(f"{base}/api/v1/me", headers=headers).status_code == 200
        with session_scope(fresh_db_url) as db:  # as `itloop tokens revoke` does, from outside
            assert service.revoke_token(session=db, prefix=token[:8]) == 1
            second = service.create_token(session=db, user=user)
        # A token issued a moment ago works at once in every worker.
        for _ in range(10):
            assert httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {second}"}).is_success
        time.sleep(TTL_S + 0.3)
        codes = {httpx.get(f"{base}/api/v1/me", headers=headers).status_code for _ in range(20)}
        assert codes == {401}
    finally:
        proc.terminate()
        proc.wait(10)
