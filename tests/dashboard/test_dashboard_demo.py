"""The dashboard on data made by a real (small) closed-loop demo run, not a hand-made seed.

The demo's virtual rig and nights fill the database exactly as a lab's would; every page
must then render its plots from the public API without an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _install_settings, make_settings
from tests.dashboard.conftest import shot
from tests.dashboard.test_dashboard import errors, login, trace_names, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a demo in a browser: not in test-fast

SMALL_NIGHT = {
    "candidates": ["pixels16", "tiny_cnn"],
    "epsilons": [1.0, 2.0],
    "clean_per_site": 1,
    "targeted_epsilons": [2.0],
    "targeted_per_site": 1,
    "random_per_site": 1,
    "restarts": 2,
    "budget": 12,
    "repeats": 4,
    "n_boot": 50,
    "model_sensitivity_images": 1,
    "model_sensitivity_budget": 8,
}


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Run a 2-day demo on SQLite, then serve its database; yields (base URL, viewer token)."""
    from demo.run import run_demo
    from demo.server import BackgroundServer
    from server.auth import service
    from server.db.engine import get_engine, session_scope

    folder: Path = tmp_path_factory.mktemp("demo-dash")
    url = f"sqlite:///{folder / 'demo.db'}"
    settings = make_settings(url, folder)
    with pytest.MonkeyPatch.context() as mp:
        _install_settings(settings, mp)
        run_demo(settings, days=2, n_sites=4, seed=3, night_params=SMALL_NIGHT, show_progress=False)
        with session_scope(url) as session:
            user = service.create_user(session=session, name="demo-dash-viewer", role="viewer")
            token = service.create_token(session=session, user=user)
        server = BackgroundServer(settings).start()
        try:
            yield server.url, token
        finally:
            server.stop()
            get_engine(url).dispose()


@pytest.fixture(scope="module")
def demo_page(browser: Any, demo_server: tuple[str, str]) -> Iterator[Any]:
    # bypass_csp: Playwright's wait_for_function uses eval, which the pages' CSP forbids (the pages
    # themselves are checked under the enforced policy in test_dashboard.py::test_pages_work_under_the_csp)
    context = browser.new_context(
        base_url=demo_server[0], viewport={"width": 1400, "height": 1000}, bypass_csp=True
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.uncaught = []
    page.on("pageerror", lambda exc: page.uncaught.append(str(exc)))
    login(page, demo_server[1])
    try:
        yield page
    finally:
        context.close()


def test_every_page_renders_demo_data(demo_page: Any) -> None:
    page = demo_page
    assert wait_ready(page) == "ready", errors(page)
    assert page.inner_text("#today-batch-id").strip()  # the batch the demo's last night published
    # The morning headline on real figures: IT's population value with its CI beside each candidate.
    rows = page.locator("#headline-sensitivity-table tbody tr").all_inner_texts()
    assert rows and rows[0].startswith("IT (sign-corrected") and "[" in rows[0], rows
    assert {r.split("\t")[0].removeprefix("model ").removesuffix(" (chosen)") for r in rows[1:]} >= set(
        SMALL_NIGHT["candidates"]
    ), rows
    assert "Night " in page.inner_text("#headline-night")
    # The demo completes each recording day as a lab does: every session reads complete, none open.
    sessions = page.inner_text("#sessions-table")
    assert "complete 20" in sessions and "not marked complete" not in sessions, sessions
    shot(page, "demo-overview", "sqlite")

    page.goto("/dashboard/sensitivity")
    assert wait_ready(page) == "ready", errors(page)
    names = trace_names(page, "#sens-plot")
    for needed in ("IT sign-corrected", "IT plain", "IT random-pair baseline"):
        assert needed in names, names
    models = [n for n in names if n.startswith("model ")]
    # Each candidate, and the across-day search once twins exist, attacked on IT's images.
    assert sorted(n.rsplit("-", 1)[-1] for n in models) == sorted([*SMALL_NIGHT["candidates"], "search"]), (
        names
    )
    shot(page, "demo-sensitivity", "sqlite")

    # Day over day: one line per candidate through the nights' versions ("night<N>-<candidate>").
    page.goto("/dashboard/days")
    assert wait_ready(page) == "ready", errors(page)
    models = [
        t
        for t in page.evaluate("document.querySelector('#days-sens-plot').data")
        if t["name"].startswith("model ")
    ]
    names = [t["name"] for t in models]
    assert {f"model {c}" for c in SMALL_NIGHT["candidates"]} <= set(names) and len(names) == len(
        set(names)
    ), names
    for t in models:
        assert "night" not in t["name"] and t["x"] == sorted(set(t["x"])), t["name"]
    # Predictivity by night: each candidate's versions of nights 1 and 2 make one line.
    pred = {t["name"]: t for t in page.evaluate("document.querySelector('#days-pred-plot').data")}
    for cand in SMALL_NIGHT["candidates"]:
        assert pred[cand]["x"] == [1, 2], (cand, pred[cand]["x"])
        assert pred[cand]["meta"]["versions"] == [f"night1-{cand}", f"night2-{cand}"]
    assert not [n for n in pred if n.startswith("night")], list(pred)

    for path in ("/dashboard/models", "/dashboard/images", "/dashboard/days"):
        page.goto(path)
        assert wait_ready(page) == "ready", (path, errors(page))
        assert not errors(page), (path, errors(page))
        assert page.locator(".js-plotly-plot, img").count() > 0, path
        shot(page, "demo-" + path.rsplit("/", 1)[-1], "sqlite")
    assert not page.uncaught, page.uncaught
