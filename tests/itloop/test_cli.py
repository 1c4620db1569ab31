"""The CLI on the embedded default: upgrade, users, tokens, errors without tracebacks."""

from __future__ import annotations

import os
import socket
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


def test_revoked_bootstrap_token_stays_revoked_and_upgrade_succeeds(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The compose prestart runs `itloop db upgrade` on every deploy with the same bootstrap token."""
    bootstrap = cli_env["ITLOOP_BOOTSTRAP_ADMIN_TOKEN"]
    assert _itloop(["db", "upgrade"], cli_env).returncode == 0
    r = _itloop(["tokens", "revoke", bootstrap[:8]], cli_env)
    assert r.returncode == 0 and "revoked 1" in r.stdout
    r = _itloop(["db", "upgrade"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "revoked" in r.stderr and "Traceback" not in r.stderr
    assert bootstrap not in r.stderr + r.stdout
    assert _itloop(["db", "upgrade"], cli_env).returncode == 0  # and again

    from fastapi.testclient import TestClient

    from itloop.settings import Settings
    from server.app import create_app

    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as c:
        assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {bootstrap}"}).status_code == 401
    # A new bootstrap token seeds a new admin token (for the existing admin user).
    cli_env["ITLOOP_BOOTSTRAP_ADMIN_TOKEN"] = "itl_the-next-bootstrap-token-for-tests"
    r = _itloop(["db", "upgrade"], cli_env)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as c:
        me = c.get("/api/v1/me", headers={"Authorization": "Bearer itl_the-next-bootstrap-token-for-tests"})
        assert me.status_code == 200 and me.json()["role"] == "admin"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ITLOOP_TOKEN_PEPPER": "weakpepper7"}, "ITLOOP_TOKEN_PEPPER has 11 characters"),
        ({"ITLOOP_TOKEN_PEPPER": "ab" * 20}, "ITLOOP_TOKEN_PEPPER has only 2 distinct characters"),
        ({"ITLOOP_TOKEN_PEPPER": None}, "ITLOOP_TOKEN_PEPPER is the development value"),
        ({"ITLOOP_BOOTSTRAP_ADMIN_TOKEN": "itl_admin123"}, "ITLOOP_BOOTSTRAP_ADMIN_TOKEN has 12 characters"),
        ({"ITLOOP_DATABASE_URL": None}, "the database is SQLite"),
        ({"ITLOOP_REDIS_URL": None}, "ITLOOP_REDIS_URL is unset"),
    ],
)
def test_production_refuses_unsafe_settings_with_a_clear_message(
    cli_env: dict[str, str], overrides: dict[str, str | None], named: str
) -> None:
    strong = {
        "ITLOOP_ENV": "production",
        "ITLOOP_TOKEN_PEPPER": "9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c1b3d5f7e9a2c4b6d",
        "ITLOOP_BOOTSTRAP_ADMIN_TOKEN": "itl_Zq8rT2vW9xK4mN7pL3sD6fG1hJ5bC0aE",
        "ITLOOP_DATABASE_URL": "postgresql+psycopg://itloop@127.0.0.1:1/itloop",
        "ITLOOP_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    env = {**cli_env, **strong}
    if "SQLite" in named:
        # The strong configuration passes the settings check (it then fails on the unreachable
        # database, which is not what this test is about).
        ok = _itloop(["tokens", "revoke", "itl_none"], env)
        assert "refuses to start" not in ok.stderr
    for key, value in overrides.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    r = _itloop(["db", "upgrade"], env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "ITLOOP_ENV=production refuses to start" in r.stderr and named in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    for value in overrides.values():  # a refused secret is never echoed back
        assert value is None or value not in r.stderr
    commands = (["serve"], ["worker", "--burst"]) if "SQLite" in named else ()  # once is enough
    for command in commands:
        r = _itloop(command, env)
        assert r.returncode == 2 and named in r.stderr and "Traceback" not in r.stderr


def test_production_refusal_is_clear_outside_the_cli_too(cli_env: dict[str, str]) -> None:
    """The compose prestart script and a bare `uvicorn --factory` refuse as clearly as the CLI."""
    root = Path(__file__).resolve().parents[2]
    env = {**cli_env, "ITLOOP_ENV": "production", "ITLOOP_TOKEN_PEPPER": "short-pepper"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)
    for cmd in (
        ["bash", str(root / "scripts" / "prestart.sh")],
        [sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory", "--port", "1"],
    ):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=root)
        assert r.returncode != 0, cmd
        assert "ITLOOP_ENV=production refuses to start" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "short-pepper" not in r.stderr


# --- clear errors: exit codes that say what to do (docs/cli.md) -----------------------------


def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def test_unmigrated_database_says_run_upgrade(cli_env: dict[str, str], tmp_path: Path) -> None:
    for args in (
        ["users", "create", "ana", "--role", "admin"],
        ["tokens", "revoke", "zzzzzzzz"],
        ["db", "status"],
    ):
        r = _itloop(args, cli_env)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "run `itloop db upgrade`" in r.stderr
        _no_traceback(r)
    r = _itloop(["night", "--session", "nope"], cli_env)
    assert r.returncode == 3 and "itloop db upgrade" in r.stderr
    _no_traceback(r)
    r = _itloop(["db", "downgrade", "nonsense"], cli_env)
    assert r.returncode == 2 and "nonsense" in r.stderr and "itloop db history" in r.stderr
    _no_traceback(r)

    assert _itloop(["db", "upgrade"], cli_env).returncode == 0
    r = _itloop(["tokens", "revoke", "zzzzzzzz"], cli_env)
    assert r.returncode == 1 and "no active token starts with 'zzzzzzzz'" in r.stderr
    _no_traceback(r)
    assert _itloop(["db", "status"], cli_env).returncode == 0

    history = _itloop(["db", "history"], cli_env).stdout.strip().splitlines()
    assert history[-1].endswith("(current)")
    older = history[-2].split()[0]
    assert _itloop(["db", "downgrade", older], cli_env).returncode == 0
    r = _itloop(["users", "create", "ana", "--role", "admin"], cli_env)
    assert r.returncode == 3 and "older than this code" in r.stderr
    _no_traceback(r)

    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "itloop.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    r = _itloop(["users", "create", "ana", "--role", "admin"], cli_env)
    assert r.returncode == 3 and "newer itloop" in r.stderr
    _no_traceback(r)


def test_health_reports_the_schema_state(fresh_db_url: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.db import migrate
    from tests.conftest import make_settings

    def health() -> tuple[int, dict[str, object]]:
        with TestClient(create_app(make_settings(fresh_db_url, tmp_path))) as c:
            r = c.get("/api/v1/health")
            return r.status_code, r.json()

    code, body = health()
    assert (code, body["status"], body["schema"]) == (200, "ok", "current")
    history = sorted(migrate._known_revisions())
    migrate.downgrade(fresh_db_url, "-1")
    code, body = health()
    assert (code, body["status"], body["schema"]) == (503, "unhealthy", "behind"), (body, history)
    migrate.downgrade(fresh_db_url, "base")
    code, body = health()
    assert (code, body["schema"]) == (503, "missing")
    migrate.upgrade(fresh_db_url)
    assert health()[0] == 200


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "itloop.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _health_twice_on_one_connection(port: int, idle_s: float) -> list[int]:
    """Status of GET /api/v1/health sent twice on one HTTP/1.1 connection, ``idle_s`` apart
    (0 for a request the server answered by closing the connection)."""
    import time

    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for k in range(2):
            if k:
                time.sleep(idle_s)
            try:
                conn.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = _read_response(conn)
            except OSError:
                head = b""
            statuses.append(int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1") else 0)
    return statuses


def _read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and Content-Length body); b"" if the server closed.

    Read to its end, not one recv: the head and body may arrive apart (on a busy machine they
    did), and the body's tail would then be read as the start of the next response.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_serve_migrates_the_embedded_default_and_refuses_a_configured_database(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _serve(cli_env, port)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
                time.sleep(0.5)
        assert r.status_code == 200 and r.json()["schema"] == "current", r.text
        root = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
        # An idle connection outlives the clients' own 5 s keep-alive (server.app.KEEP_ALIVE_S),
        # so a client never sends on a connection the server is closing.
        assert _health_twice_on_one_connection(port, idle_s=6.5) == [200, 200]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "migrated the embedded database" in out and "Traceback" not in out

    # A database named in ITLOOP_DATABASE_URL is migrated by whoever deploys, never by a server.
    env = {**cli_env, "ITLOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    r = _itloop(["serve", "--port", str(port)], env)
    assert r.returncode == 3 and "run `itloop db upgrade`" in r.stderr, r.stderr
    _no_traceback(r)


# --- night parameters ---------------------------------------------------------------------


def test_night_params_are_checked_before_anything_starts(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert _itloop(["db", "upgrade"], cli_env).returncode == 0
    cases = [
        (["--param", "epsilon=3"], "unknown night parameter(s): epsilon"),
        (["--param", "restarts=0"], "restarts: Input should be greater than or equal to 1"),
        (["--param", "restarts"], "expected key=value"),
        (["--params-file", str(tmp_path / "absent.json")], "absent.json"),
    ]
    (tmp_path / "bad.yaml").write_text("epsilons: [1, 2]\nclean_per_sit: 3\n")
    cases.append((["--params-file", str(tmp_path / "bad.yaml")], "unknown night parameter(s): clean_per_sit"))
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append((["--params-file", str(tmp_path / "list.json")], "expected an object"))
    (tmp_path / "broken.json").write_text("{")
    cases.append((["--params-file", str(tmp_path / "broken.json")], "not valid JSON"))
    # A file's value loses to --param; the unknown candidate is refused by the night's own check.
    (tmp_path / "ok.yaml").write_text("candidates: [pixels16]\nrestarts: 2\n")
    for args, says in cases:
        r = _itloop(["night", "--session", "day0", *args], cli_env)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
        _no_traceback(r)
    r = _itloop(
        [
            "night",
            "--session",
            "day0",
            "--params-file",
            str(tmp_path / "ok.yaml"),
            "--param",
            'candidates=["resnet18"]',
        ],
        cli_env,
    )
    assert r.returncode == 2 and "unknown candidate model 'resnet18'" in r.stderr, r.stderr
    r = _itloop(["night", "--session", "day0", "--params-file", str(tmp_path / "ok.yaml")], cli_env)
    assert r.returncode == 1 and "no recording session 'day0'" in r.stderr, r.stderr


# --- models -------------------------------------------------------------------------------


def test_models_lists_checkpoints_and_imports_only_files_that_load(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    import hashlib

    import torch
    import torchvision

    r = _itloop(["models"], cli_env)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("resnet50 "))
    assert "resnet50.pt: MISSING" in line and "(default)" in line
    assert "no checkpoint needed" in next(ln for ln in r.stdout.splitlines() if ln.startswith("pixels16 "))

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = _itloop(["models", "import", str(junk), "--name", "resnet50"], cli_env)
    assert r.returncode == 2 and "does not load into resnet50" in r.stderr, r.stderr
    _no_traceback(r)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    r = _itloop(["models", "import", str(wrong), "--name", "resnet50"], cli_env)
    assert r.returncode == 2 and "does not match the architecture" in r.stderr, r.stderr
    assert not (tmp_path / "data" / "checkpoints" / "resnet50.pt").exists()
    assert _itloop(["models", "import", str(wrong), "--name", "pixels16"], cli_env).returncode == 2
    assert _itloop(["models", "import", str(wrong), "--name", "resnet18"], cli_env).returncode == 2

    good = tmp_path / "robust.pt"
    torch.save({"model": torchvision.models.resnet50(weights=None).state_dict()}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    r = _itloop(["models", "import", str(good), "--name", "resnet50_l2_eps3"], cli_env)
    assert r.returncode == 0 and digest in r.stdout, r.stderr
    r = _itloop(["models"], cli_env)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("resnet50_l2_eps3 "))
    assert f"present, sha256 {digest}" in line
    # Another file in its place needs --force; the same file again is a no-op.
    assert _itloop(["models", "import", str(good), "--name", "resnet50_l2_eps3"], cli_env).returncode == 0


def test_an_unreachable_database_is_exit_4(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "ITLOOP_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"}
    for args in (["users", "create", "ana"], ["db", "upgrade"], ["serve", "--port", "1"]):
        r = _itloop(args, env)
        assert r.returncode == 4 and "cannot reach the database at 127.0.0.1:1/none" in r.stderr, (
            args,
            r.stderr,
        )
        _no_traceback(r)
