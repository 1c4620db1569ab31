"""Browser and operations hardening: security headers, local API docs, tokens in URLs, failed
logins, ``last_used_at``. Production's refusals are tested on the CLI (tests/itloop/test_cli.py)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from demo.server import free_port
from server.app import create_app
from server.auth import service
from server.auth.tables import ApiToken
from server.db.engine import session_scope
from server.security import CONTENT_SECURITY_POLICY
from tests.conftest import make_settings

V1 = "/api/v1"
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def test_security_headers_on_api_dashboard_and_errors(client, auth) -> None:  # type: ignore[no-untyped-def]
    for path, headers in [
        (f"{V1}/me", auth("viewer")),  # JSON
        (f"{V1}/me", {}),  # 401 from the error handler
        (f"{V1}/no-such-route", {}),  # 404 from the router
        ("/dashboard/login", {}),  # HTML
        ("/dashboard/static/itloop.js", {}),  # a static file
        (f"{V1}/docs", {}),
    ]:
        r = client.get(path, headers=headers)
        for name, value in HEADERS.items():
            assert r.headers.get(name) == value, (path, r.status_code, name, r.headers.get(name))
    csp = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"


def test_pages_carry_no_inline_script(client) -> None:  # type: ignore[no-untyped-def]
    """script-src 'self' forbids inline scripts: every page must load its scripts from files."""
    for path in ("/dashboard/login", "/dashboard/", "/dashboard/images", "/dashboard/days", f"{V1}/docs"):
        html = client.get(path).text
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
        assert scripts, path
        for attrs, body in scripts:
            assert "src=" in attrs and not body.strip(), (path, attrs, body[:80])
        assert "http://" not in html and "https://" not in html, path  # nothing from another origin


def test_api_docs_are_served_from_this_server(client) -> None:  # type: ignore[no-untyped-def]
    html = client.get(f"{V1}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-init.js",
    }
    for asset in assets:
        assert asset.startswith(f"{V1}/docs/assets/"), asset
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    bundle = client.get(f"{V1}/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript") and len(bundle.content) > 500_000
    # Only the named assets: not every file of the vendored folder, nor anything beside it.
    for name in ("redoc.standalone.js", "__init__.py", "..%2F..%2Fsecurity.py", "%2e%2e"):
        assert client.get(f"{V1}/docs/assets/{name}").status_code == 404, name
    assert client.get(f"{V1}/openapi.json").json()["openapi"].startswith("3.1")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`itloop db upgrade` then `itloop serve` on the embedded default, as a person runs them.

    Yields the base URL, the bootstrap admin token and the file with the server's output.
    """
    token = "itl_served-admin-token-Zx81Qw"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env.update(ITLOOP_DATA_DIR=str(tmp_path / "data"), ITLOOP_BOOTSTRAP_ADMIN_TOKEN=token)
    upgrade = subprocess.run(
        [sys.executable, "-m", "itloop.cli", "db", "upgrade"], env=env, capture_output=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "itloop.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}{V1}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
            yield base, token, log_path
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_token_in_the_url_is_refused_and_not_logged(served: tuple[str, str, Path]) -> None:
    base, token, log_path = served
    for url in (f"{base}{V1}/me?token={token}", f"{base}{V1}/me?limit=1&token={token}&x=1"):
        r = httpx.get(url)
        assert r.status_code == 401 and "not accepted" in r.json()["detail"]
    r = httpx.get(f"{base}{V1}/me?access_token={token}")
    assert r.status_code == 401
    ok = httpx.get(f"{base}{V1}/me", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    time.sleep(0.5)  # let the access log lines reach the file
    text = log_path.read_text()
    assert "/api/v1/me?token=***" in text and "access_token=***" in text, text[-2000:]
    assert token not in text and token[4:] not in text


def _committed_app(fresh_db_url: str, tmp_path: Path, **overrides: object) -> tuple[TestClient, str]:
    with session_scope(fresh_db_url) as db:
        user = service.create_user(session=db, name=f"user-{tmp_path.name[-6:]}", role="viewer")
        token = service.create_token(session=db, user=user)
    app = create_app(make_settings(fresh_db_url, tmp_path, **overrides))
    return TestClient(app, raise_server_exceptions=False), token


def test_failed_logins_are_limited_per_client_and_logged(
    fresh_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, good = _committed_app(fresh_db_url, tmp_path, auth_failures_per_minute=3)
    with client, caplog.at_level(logging.WARNING, logger="server.auth.guard"):
        assert client.get(f"{V1}/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        for i in range(3):
            r = client.get(f"{V1}/me", headers={"Authorization": f"Bearer itl_guess-number-{i:04d}xyz"})
            assert r.status_code == 401
        r = client.get(f"{V1}/me", headers={"Authorization": "Bearer itl_guess-number-9999xyz"})
        assert r.status_code == 429 and "too many failed" in r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # A token this process already checked keeps working (a rig mid-batch is not cut off) ...
        assert client.get(f"{V1}/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        # ... and a missing token is a plain 401 (it guesses nothing).
        assert client.get(f"{V1}/me").status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "server.auth.guard"]
    assert sum("failed authentication from testclient on GET /api/v1/me" in m for m in lines) == 3
    assert any("refusing its token checks" in m for m in lines)
    assert not any("guess-number" in m for m in lines)  # never the token


def test_last_used_at_is_written_at_most_once_a_minute(fresh_db_url: str, tmp_path: Path) -> None:
    client, token = _committed_app(fresh_db_url, tmp_path)

    def last_used() -> object:
        with session_scope(fresh_db_url) as db:
            return db.scalar(select(ApiToken.last_used_at).where(ApiToken.prefix == token[:8]))

    assert last_used() is None
    with client:
        assert client.get(f"{V1}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        first = last_used()
        assert first is not None
        for _ in range(3):
            assert client.get(f"{V1}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # Another process (a new app) within the minute does not write it again either.
    again, _ = _committed_app(fresh_db_url, tmp_path / "other")
    with again:
        assert again.get(f"{V1}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert last_used() == first


def test_last_used_write_never_stalls_a_request_behind_a_writer(
    backend: str, fresh_db_url: str, tmp_path: Path
) -> None:
    """SQLite: while another connection holds the write lock (a long upload), a request whose
    token is due a ``last_used_at`` write skips it within a fraction of a second."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL writers do not lock the table; a row lock is only held by a touch")
    import sqlite3

    client, token = _committed_app(fresh_db_url, tmp_path)
    writer = sqlite3.connect(fresh_db_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with client:
            t0 = time.monotonic()
            r = client.get(f"{V1}/me", headers={"Authorization": f"Bearer {token}"})
            elapsed = time.monotonic() - t0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert r.status_code == 200 and elapsed < 5, elapsed
    with session_scope(fresh_db_url) as db:
        assert db.scalar(select(ApiToken.last_used_at).where(ApiToken.prefix == token[:8])) is None
