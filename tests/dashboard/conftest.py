"""A live itloop server on a seeded database and a headless Debian Chromium to drive it.

The server and the browser are module-scoped so that the whole browser suite stays
under a minute: uvicorn runs in a background thread on a free port, against a
brand-new committed database filled by :mod:`.seed`. The pages only see the JSON API,
whose backend differences the API tests cover on both databases, so the browser runs
once, on PostgreSQL (the deployment database) when it is among the test backends.
Each test gets a fresh tab, so nothing leaks through ``sessionStorage`` (it is per tab).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from itloop.storage import get_store
from server.db.engine import get_engine, session_scope
from tests.conftest import BACKENDS, _install_settings, make_settings, new_database
from tests.dashboard.seed import Seeded, seed

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@dataclass
class LiveServer:
    base_url: str
    seeded: Seeded
    backend: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DASHBOARD_BACKEND = "postgresql" if "postgresql" in BACKENDS else BACKENDS[0]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """uvicorn serving ``create_app`` on a seeded, committed database."""
    import uvicorn

    backend = DASHBOARD_BACKEND

    from server.app import create_app

    folder = tmp_path_factory.mktemp("dashboard")
    url, cleanup = new_database(backend, folder, f"dash_{uuid.uuid4().hex[:8]}")
    settings = make_settings(url, folder)
    with pytest.MonkeyPatch.context() as mp:
        _install_settings(settings, mp)
        with session_scope(url) as session:
            seeded = seed(session, get_store(settings.resolved_store_url))
        port = _free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start for the dashboard tests")
            time.sleep(0.05)
        try:
            yield LiveServer(base_url=f"http://127.0.0.1:{port}", seeded=seeded, backend=backend)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            get_engine(url).dispose()
            cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium under Playwright; never a downloaded browser."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser_context(browser: object, live_server: LiveServer) -> Iterator[object]:
    """One context per module so the 4.8 MB Plotly bundle is fetched and compiled once.

    ``bypass_csp``: Playwright's ``wait_for_function`` evaluates its predicate with ``eval``,
    which the pages' Content-Security-Policy forbids; ``strict_page`` runs without the bypass
    to prove the pages themselves work under that policy (``test_pages_work_under_the_csp``).
    """
    context = browser.new_context(  # type: ignore[attr-defined]
        base_url=live_server.base_url, viewport={"width": 1400, "height": 1000}, bypass_csp=True
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: object) -> Iterator[object]:
    """A fresh tab (sessionStorage is per tab) that records uncaught page errors."""
    pg = browser_context.new_page()  # type: ignore[attr-defined]
    pg.uncaught = []  # JavaScript exceptions that reached the window
    pg.on("pageerror", lambda exc: pg.uncaught.append(str(exc)))
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def strict_page(browser: object, live_server: LiveServer) -> Iterator[object]:
    """A tab in a context that enforces the Content-Security-Policy; records violations and errors."""
    context = browser.new_context(base_url=live_server.base_url, viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    context.set_default_timeout(20_000)
    pg = context.new_page()
    pg.uncaught = []
    pg.violations = []
    pg.on("pageerror", lambda exc: pg.uncaught.append(str(exc)))
    pg.on(
        "console",
        lambda msg: (
            pg.violations.append(msg.text)
            if "Content Security Policy" in msg.text or "Refused to" in msg.text
            else None
        ),
    )
    try:
        yield pg
    finally:
        context.close()


def shot(page: object, name: str, backend: str) -> None:
    """Keep a screenshot of what the test saw (test-artifacts/ is gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{backend}.png"), full_page=True)  # type: ignore[attr-defined]
