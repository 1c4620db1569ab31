"""The CLI on the embedded default: upgrade, users, tokens, errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _itloop(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "itloop.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["ITLOOP_DATA_DIR"] = str(tmp_path / "data")
    env["ITLOOP_BOOTSTRAP_ADMIN_TOKEN"] = "itl_bootstrap-token-for-tests"
    return env


def test_upgrade_users_tokens_roundtrip(cli_env: dict[str, str], tmp_path: Path) -> None:
    r = _itloop(["db", "upgrade"], cli_env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "itloop.db").exists()
    r = _itloop(["db", "check"], cli_env)
    assert r.returncode == 0 and "no drift" in r.stdout
    r = _itloop(["users", "create", "ana", "--role", "experimenter"], cli_env)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("itl_")
    r = _itloop(["users", "create", "ana", "--role", "experimenter"], cli_env)
    assert r.returncode == 1
    assert "already exists" in r.stderr and "Traceback" not in r.stderr
    r = _itloop(["users", "create", "bob", "--role", "pope"], cli_env)
    assert r.returncode == 1 and "unknown role" in r.stderr

    from fastapi.testclient import TestClient

    from itloop.settings import Settings
    from server.app import create_app

    s = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(s)) as c:
        me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["role"] == "experimenter"
        admin = c.get("/api/v1/me", headers={"Authorization": "Bearer itl_bootstrap-token-for-tests"})
        assert admin.json()["role"] == "admin"
    r = _itloop(["tokens", "revoke", token[:8]], cli_env)
    assert "revoked 1" in r.stdout
    # Bootstrap seeding is idempotent.
    assert _itloop(["db", "upgrade"], cli_env).returncode == 0
