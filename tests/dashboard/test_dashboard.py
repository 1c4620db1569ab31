"""The dashboard end to end: Debian Chromium logs in with a viewer token and reads every page.

Each page is checked for what a person would look at (plots with the expected series,
tables with the seeded rows) and for its failure modes: a wrong token and API errors
must show as visible ``.error`` messages carrying the API's detail, never a blank page.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.conftest import LiveServer, shot
from tests.dashboard.seed import EXPECT, FAILED_JOB_ERROR, OBSERVED_HZ_PER_EPS, VERSIONS

pytestmark = pytest.mark.browser

Page = Any  # playwright.sync_api.Page; kept loose so collection needs no playwright import


def login(page: Page, token: str) -> None:
    page.goto("/dashboard/login")
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_url("**/dashboard/")


def wait_ready(page: Page) -> str:
    """Wait until the page's script has finished its first round of API calls."""
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)")
    return str(page.evaluate("document.body.dataset.state"))


def errors(page: Page) -> list[str]:
    return [t.strip() for t in page.locator(".error").all_inner_texts()]


def trace_names(page: Page, selector: str) -> list[str]:
    return list(
        page.evaluate(f"Array.from(document.querySelector({selector!r}).data || []).map(t => t.name)")
    )


def trace(page: Page, selector: str, name: str) -> dict[str, Any]:
    """One Plotly trace of a plot, read back from the DOM by its legend name."""
    found = page.evaluate(
        "([sel, name]) => (document.querySelector(sel).data || []).find(t => t.name === name) || null",
        [selector, name],
    )
    assert found is not None, f"no trace {name!r} in {selector}: {trace_names(page, selector)}"
    return dict(found)


def test_login_with_viewer_token_opens_overview(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    assert wait_ready(page) == "ready", errors(page)
    assert "dash-viewer (viewer)" in page.inner_text("#whoami")
    assert page.evaluate("sessionStorage.getItem('itloop.token')") == live_server.seeded.viewer_token
    # Today's batch, last night's jobs with the failed one and its error, both recording days.
    assert page.inner_text("#today-batch-id") == live_server.seeded.batch_id
    jobs = page.inner_text("#jobs-table")
    assert FAILED_JOB_ERROR in jobs
    assert "failed" in jobs and "running" in jobs
    assert page.locator("#sessions-table tbody tr").count() == len(live_server.seeded.days)
    assert not page.uncaught
    shot(page, "overview", live_server.backend)


def test_wrong_token_shows_error(page: Page, live_server: LiveServer) -> None:
    page.goto("/dashboard/login")
    page.fill("#token", "itl_this-is-not-a-valid-token")
    page.click("#login-button")
    page.wait_for_selector(".error")
    text = " ".join(errors(page))
    assert "401" in text and "invalid or revoked token" in text
    assert page.evaluate("sessionStorage.getItem('itloop.token')") is None
    shot(page, "login-error", live_server.backend)


def test_stale_token_on_a_page_shows_error(page: Page, live_server: LiveServer) -> None:
    page.add_init_script("sessionStorage.setItem('itloop.token', 'itl_revoked-or-never-issued-token')")
    page.goto("/dashboard/sensitivity")
    assert wait_ready(page) == "error"
    text = " ".join(errors(page))
    assert "invalid or revoked token" in text
    assert page.locator(".error a", has_text="Log in again").count() == 1


def test_sensitivity_page_plots_it_models_and_baselines(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    page.goto("/dashboard/sensitivity")
    assert wait_ready(page) == "ready", errors(page)
    names = trace_names(page, "#sens-plot")
    assert len(names) == EXPECT["sensitivity_traces_both"], names
    for needed in (
        "IT sign-corrected",
        "IT plain",
        "IT random-pair baseline",
        "IT model-free baseline (sign-corrected)",
        *(f"model {v}" for v in VERSIONS),
    ):
        assert needed in names
    # Every curve has one point per epsilon and carries its confidence interval.
    sign = trace(page, "#sens-plot", "IT sign-corrected")
    assert sign["x"] == list(live_server.seeded.epsilons)
    assert all(v > 0 for v in sign["error_y"]["arrayminus"] + sign["error_y"]["array"])
    assert page.locator("#sens-plot .trace").count() >= len(names)
    shot(page, "sensitivity", live_server.backend)

    # Sign-corrected only drops the plain-family curves.
    page.select_option("#estimator-select", "sign_corrected")
    names = trace_names(page, "#sens-plot")
    assert "IT plain" not in names and "IT noise floor" not in names and "IT sign-corrected" in names
    # A single site, day 1: only the first model version existed then.
    page.select_option("#site-select", live_server.seeded.sites[1])
    page.select_option("#day-select", "1")
    page.wait_for_function("document.querySelector('#sens-plot').layout.title.text.includes('day 1')")
    names = trace_names(page, "#sens-plot")
    assert f"model {VERSIONS[0]}" in names and f"model {VERSIONS[1]}" not in names
    assert len(trace_names(page, "#sites-plot")) >= 3
    assert not page.uncaught


def test_sensitivity_unknown_site_shows_api_error(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    page.goto("/dashboard/sensitivity?site=no-such-site")
    assert wait_ready(page) == "error"
    text = " ".join(errors(page))
    assert "404" in text and "no-such-site" in text
    shot(page, "sensitivity-unknown-site", live_server.backend)


def test_models_page_shows_choice_predictivity_and_transfer(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    page.goto("/dashboard/models")
    assert wait_ready(page) == "ready", errors(page)
    table = page.inner_text("#versions-table")
    assert all(v in table for v in VERSIONS)
    assert "highest median noise-ceiled predictivity" in table  # why the chosen one was chosen
    assert page.input_value("#version-select") == live_server.seeded.chosen
    assert trace_names(page, "#pred-plot") == [
        "predictivity (Pearson r)",
        "noise-ceiled predictivity",
        "noise ceiling",
    ]
    sites = page.evaluate("document.querySelector('#pred-plot').data[1].x")
    assert sites == list(live_server.seeded.sites)
    assert len(trace_names(page, "#transfer-plot")) == 2
    nights = trace_names(page, "#nights-plot")
    assert "chosen model" in nights and "CKA (layer vs IT)" in nights
    assert page.locator("#site-metrics-table tbody tr").count() == len(live_server.seeded.sites)
    assert "gated: drift" in page.inner_text("#site-metrics-table")
    shot(page, "models", live_server.backend)


def test_images_page_shows_clean_up_and_down(page: Page, live_server: LiveServer) -> None:
    seeded = live_server.seeded
    site, eps = seeded.sites[0], seeded.epsilons[1]
    login(page, seeded.viewer_token)
    page.goto(f"/dashboard/images?site={site}&eps={eps}")
    assert wait_ready(page) == "ready", errors(page)
    rows = page.locator(".triplet")
    assert rows.count() == len(seeded.clean)
    first = seeded.perturbed[(site, eps)]
    row = page.locator(f".triplet[data-parent='{first['clean']}']")
    shas = row.locator("figure").evaluate_all("fs => fs.map(f => f.dataset.sha256)")
    assert shas == [first["clean"], first["up"], first["down"]]
    # The PNGs really load (fetched with the token, shown as blob URLs).
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.triplet img'))"
        ".every(i => i.complete && i.naturalWidth === 64)"
    )
    text = row.inner_text()
    assert "predicted change" in text and "0.9" in text and "-0.9" in text  # 0.3 * eps, up and down
    assert "achieved L2" in text
    # Observed change: responses of the session that showed the batch, perturbed minus clean.
    up, down = (row.locator(f"figure[data-sha256='{first[d]}']").inner_text() for d in ("up", "down"))
    hz = OBSERVED_HZ_PER_EPS * eps
    assert f"observed change\n{hz:g} Hz (n=3 vs 3)" in up, up
    assert f"observed change\n{-hz:g} Hz (n=3 vs 3)" in down, down
    shot(page, "images", live_server.backend)


def test_images_unknown_batch_shows_api_error(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    page.goto("/dashboard/images?batch=no-such-batch")
    assert wait_ready(page) == "error"
    text = " ".join(errors(page))
    assert "404" in text and "no-such-batch" in text
    shot(page, "images-unknown-batch", live_server.backend)


def test_day_over_day_page(page: Page, live_server: LiveServer) -> None:
    login(page, live_server.seeded.viewer_token)
    page.goto("/dashboard/days")
    assert wait_ready(page) == "ready", errors(page)
    names = trace_names(page, "#days-sens-plot")
    assert {"IT sign-corrected", "IT plain", "IT random-pair baseline", "IT model-free baseline"} <= set(
        names
    )
    assert {f"model {v}" for v in VERSIONS} <= set(names)
    sign = trace(page, "#days-sens-plot", "IT sign-corrected")["x"]
    assert sign == list(live_server.seeded.days)
    assert len(trace_names(page, "#days-pred-plot")) == 2
    page.select_option("#site-select", live_server.seeded.sites[0])
    page.wait_for_function("document.querySelector('#days-pred-plot').layout.title.text.startsWith('site')")
    assert not page.uncaught
    shot(page, "days", live_server.backend)


def test_forbidden_role_and_unknown_version_show_api_errors(page: Page, live_server: LiveServer) -> None:
    # A rig token is valid (GET /me works) but may not read model versions: 403 with the API's reason.
    login(page, live_server.seeded.rig_token)
    page.goto("/dashboard/models")
    assert wait_ready(page) == "error"
    text = " ".join(errors(page))
    assert "403" in text and "may not do this" in text
    # A viewer asking for a version that does not exist: 404 beside the (still drawn) other plots.
    page.evaluate(f"sessionStorage.setItem('itloop.token', {live_server.seeded.viewer_token!r})")
    page.goto("/dashboard/models?version=no-such-version")
    assert wait_ready(page) == "error"
    text = " ".join(errors(page))
    assert "404" in text and "no-such-version" in text
    assert "chosen model" in trace_names(page, "#nights-plot")
    assert not page.uncaught
    shot(page, "models-unknown-version", live_server.backend)


def test_pages_work_under_the_csp(strict_page: Page, live_server: LiveServer) -> None:
    """Every page, with the server's Content-Security-Policy enforced: no violation, no error,
    plots drawn and images shown (blob: URLs), and the API docs render from local assets."""
    page = strict_page
    page.goto("/dashboard/login")
    page.fill("#token", live_server.seeded.viewer_token)
    page.click("#login-button")
    page.wait_for_url("**/dashboard/")
    done = "body[data-state='ready'], body[data-state='error']"
    for path, drawn in [
        ("/dashboard/", "#jobs-table"),
        ("/dashboard/sensitivity", "#sens-plot .trace"),
        ("/dashboard/models", ".js-plotly-plot .trace"),
        ("/dashboard/images", "img[src^='blob:']"),
        ("/dashboard/days", ".js-plotly-plot .trace"),
    ]:
        page.goto(path)
        page.wait_for_selector(done)
        assert page.get_attribute("body", "data-state") == "ready", (path, errors(page))
        page.wait_for_selector(drawn)
    page.goto("/api/v1/docs")
    page.wait_for_selector(".swagger-ui .opblock")  # Swagger UI rendered the operations
    assert page.locator(".swagger-ui .opblock").count() > 20
    assert not page.violations, page.violations
    assert not page.uncaught, page.uncaught
    shot(page, "api-docs", live_server.backend)
