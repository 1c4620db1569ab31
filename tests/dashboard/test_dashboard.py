"""The dashboard end to end: Debian Chromium logs in with a viewer token and reads every page.

Each page is checked for what a person would look at (plots with the expected series,
tables with the seeded rows) and for its failure modes: a wrong token and API errors
must show as visible ``.error`` messages carrying the API's detail, never a blank page.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.conftest import LiveServer, shot
from tests.dashboard.seed import (
    CANDIDATE_OF,
    EXPECT,
    FAILED_JOB_ERROR,
    NEGATIVE,
    NIGHT_OF,
    OBSERVED_HZ_PER_EPS,
    VERSIONS,
)

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
    # Both seeded sessions are closed: "complete" with their closing time, not "open".
    sessions = page.inner_text("#sessions-table")
    assert sessions.count("complete") == 2 and "open" not in sessions
    assert "2024-05-06 11:00 UTC" in sessions  # day 1's completed_at
    assert not page.uncaught
    shot(page, "overview", live_server.backend)


def test_overview_morning_headline(page: Page, live_server: LiveServer) -> None:
    """Population sensitivity vs each candidate with CIs, last night, the rig, gated sites."""
    seeded = live_server.seeded
    login(page, seeded.viewer_token)
    assert wait_ready(page) == "ready", errors(page)
    assert page.input_value("#headline-eps") == "3"  # the middle of the seeded 1, 3, 10
    rows = page.locator("#headline-sensitivity-table tbody tr").all_inner_texts()
    # IT, then one row per candidate (resnet50 from its newest night, not both of its versions).
    assert len(rows) == 2 + len(set(CANDIDATE_OF.values())), rows
    assert rows[0].startswith("IT (sign-corrected")
    assert rows[1].startswith("IT to date (every day pooled)")
    rows = [rows[0], *rows[2:]]
    assert "model resnet50\t" in rows[1] and VERSIONS[2] in rows[1] and VERSIONS[0] not in rows[1]
    assert "model resnet50_l2_eps3 (chosen)" in rows[2]
    gain = 0.06 * 1.2 * 3.0**0.8  # the seed's IT population value on day 2 at eps 3
    assert f"{gain:.3f}".rstrip("0") in rows[0] and "[" in rows[0]  # value and its 95% CI
    assert "×" in rows[1] and "×" in rows[2]  # each model against IT
    lead = page.inner_text("#headline-sensitivity .lead")
    assert lead.startswith("Day 2, ε = 3")
    night = page.inner_text("#headline-night")
    assert "Night" in night and "failed" in night and FAILED_JOB_ERROR in night
    assert "yesterday's batch stays in use" in night
    rig = page.inner_text("#headline-rig-text")
    assert "recording" in rig and seeded.batch_id in rig and "m1-2024-05-07" in rig
    sites = page.inner_text("#headline-sites")
    assert "1 of 4 sites gated or drifting" in sites and f"{seeded.sites[3]}: gated, drifting" in sites
    # Another epsilon redraws the table from the same summary.
    page.select_option("#headline-eps", "10")
    page.wait_for_function(
        "document.querySelector('#headline-sensitivity .lead').textContent.includes('ε = 10')"
    )
    assert not page.uncaught


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
        "IT to date sign-corrected",
        "IT to date noise-corrected (signed RMS)",
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


def drawn_points(page: Page, selector: str, name: str) -> int:
    """How many markers Plotly actually drew for the trace called ``name`` (a log axis drops <= 0)."""
    return int(
        page.evaluate(
            """([sel, name]) => {
                const gd = document.querySelector(sel);
                const i = gd.data.findIndex(t => t.name === name);
                const layer = gd.querySelectorAll('.scatterlayer .trace')[i];
                return Array.from(layer.querySelectorAll('.points path'))
                    .filter(p => (p.getAttribute('d') || '') && p.getAttribute('transform')).length;
            }""",
            [selector, name],
        )
    )


def test_negative_estimates_are_drawn_on_every_scale(page: Page, live_server: LiveServer) -> None:
    """Day 1's population sign-corrected and noise-corrected figures at eps 1 are below zero: the
    linear default and the symmetric-log option both draw every point, with its interval."""
    seeded = live_server.seeded
    login(page, seeded.viewer_token)
    page.goto("/dashboard/sensitivity?day=1")
    assert wait_ready(page) == "ready", errors(page)
    assert page.input_value("#scale-select") == "linear"
    assert [o for o in page.locator("#scale-select option").all_inner_texts() if "log" in o] == [
        "symmetric log (keeps zero and negatives)"
    ]
    for name, est in (
        ("IT sign-corrected", "sign_corrected"),
        ("IT noise-corrected (signed RMS)", "plain_noise_corrected"),
    ):
        t = trace(page, "#sens-plot", name)
        value, low, high = NEGATIVE[(est, 1)]
        assert t["y"][0] == pytest.approx(value)
        assert t["error_y"]["arrayminus"][0] == pytest.approx(value - low)
        assert drawn_points(page, "#sens-plot", name) == len(seeded.epsilons)
    page.select_option("#scale-select", "symlog")
    page.wait_for_function(
        "document.querySelector('#sens-plot').layout.yaxis.title.text.includes('symmetric')"
    )
    t = trace(page, "#sens-plot", "IT sign-corrected")
    assert t["y"][0] < 0 and t["customdata"][0] == pytest.approx(NEGATIVE[("sign_corrected", 1)][0])
    assert drawn_points(page, "#sens-plot", "IT sign-corrected") == len(seeded.epsilons)
    ticks = page.evaluate("document.querySelector('#sens-plot').layout.yaxis.ticktext")
    assert "0" in ticks and any(str(x).startswith("-") for x in ticks)
    assert "scale=symlog" in page.url
    # An old bookmark asking for a log axis gets the symmetric one, never a log axis.
    page.goto("/dashboard/sensitivity?day=1&scale=log")
    assert wait_ready(page) == "ready", errors(page)
    assert page.input_value("#scale-select") == "symlog"
    assert page.evaluate("document.querySelector('#sens-plot').layout.yaxis.type") == "linear"
    # Day over day keeps day 1's negative population figure at eps 1 too.
    page.goto("/dashboard/days?eps=1.0")
    assert wait_ready(page) == "ready", errors(page)
    sign = trace(page, "#days-sens-plot", "IT sign-corrected")
    assert sign["x"] == list(seeded.days) and sign["y"][0] < 0
    assert drawn_points(page, "#days-sens-plot", "IT sign-corrected") == len(seeded.days)
    assert not page.uncaught
    shot(page, "days-negative", live_server.backend)


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
    seeded = live_server.seeded
    login(page, seeded.viewer_token)
    page.goto("/dashboard/days")
    assert wait_ready(page) == "ready", errors(page)
    names = trace_names(page, "#days-sens-plot")
    assert {"IT sign-corrected", "IT plain", "IT random-pair baseline", "IT model-free baseline"} <= set(
        names
    )
    # One line per candidate, never per version: resnet50's two versions make one line over both days.
    candidates = sorted(set(CANDIDATE_OF.values()))
    assert sorted(n for n in names if n.startswith("model ")) == [f"model {c}" for c in candidates]
    sign = trace(page, "#days-sens-plot", "IT sign-corrected")["x"]
    assert sign == list(seeded.days)
    assert trace(page, "#days-sens-plot", "IT to date sign-corrected")["x"] == [2]
    assert "IT to date plain" not in names
    resnet = trace(page, "#days-sens-plot", "model resnet50")
    assert resnet["x"] == list(seeded.days)
    assert resnet["meta"]["versions"] == [VERSIONS[0], VERSIONS[2]]  # day 2 uses night 2's refit
    assert trace(page, "#days-sens-plot", "model resnet50_l2_eps3")["x"] == [2]
    assert page.input_value("#scale-select") == "linear"
    # Predictivity: one line per candidate through its nights; chosen versions are starred.
    pred = {t["name"]: t for t in page.evaluate("document.querySelector('#days-pred-plot').data")}
    assert sorted(pred) == candidates
    assert pred["resnet50"]["x"] == [1, 2] and pred["resnet50_l2_eps3"]["x"] == [2]
    assert pred["resnet50_l2_eps3"]["marker"]["symbol"] == ["star"]
    # One site's history: still one line per candidate, not one zig-zag through every version.
    page.select_option("#site-select", seeded.sites[0])
    page.wait_for_function("document.querySelector('#days-pred-plot').layout.title.text.startsWith('site')")
    hist = {t["name"]: t for t in page.evaluate("document.querySelector('#days-pred-plot').data")}
    assert sorted(hist) == candidates
    assert hist["resnet50"]["x"] == [NIGHT_OF[VERSIONS[0]], NIGHT_OF[VERSIONS[2]]]
    assert hist["resnet50"]["meta"]["versions"] == [VERSIONS[0], VERSIONS[2]]
    assert not page.uncaught
    shot(page, "days", live_server.backend)


OKABE_ITO = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"}


def trace_colors(page: Page, selector: str) -> dict[str, str]:
    return dict(
        page.evaluate(
            """sel => Object.fromEntries((document.querySelector(sel).data || [])
                .filter(t => t.line && typeof t.line.color === 'string')
                .map(t => [t.name, t.line.color]))""",
            selector,
        )
    )


def test_one_colour_per_candidate_on_every_page(page: Page, live_server: LiveServer) -> None:
    """Okabe-Ito colours; a candidate has the same colour on every page; no two candidates share one."""
    login(page, live_server.seeded.viewer_token)
    seen: dict[str, set[str]] = {}
    page.goto("/dashboard/sensitivity")
    assert wait_ready(page) == "ready", errors(page)
    sens = trace_colors(page, "#sens-plot")
    for v in VERSIONS:
        seen.setdefault(CANDIDATE_OF[v], set()).add(sens[f"model {v}"])
    it = {name: c for name, c in sens.items() if name.startswith("IT ")}
    page.goto("/dashboard/days")
    assert wait_ready(page) == "ready", errors(page)
    days = trace_colors(page, "#days-sens-plot")
    for cand in set(CANDIDATE_OF.values()):
        seen[cand].add(days[f"model {cand}"])
    for name, c in trace_colors(page, "#days-pred-plot").items():
        seen[name].add(c)
    page.goto("/dashboard/models")
    assert wait_ready(page) == "ready", errors(page)
    for name, c in trace_colors(page, "#nights-plot").items():
        seen[name].add(c)
    assert all(len(c) == 1 for c in seen.values()), seen
    colours = [next(iter(c)) for c in seen.values()]
    assert len(set(colours)) == len(colours), seen  # two candidates never share a colour
    assert set(colours) <= OKABE_ITO
    assert it["IT sign-corrected"] == "#000000" and not set(colours) & set(it.values())
    assert not page.uncaught


def test_token_is_shared_across_tabs_and_logout_clears_all(
    page: Page, browser_context: Any, live_server: LiveServer
) -> None:
    """A second tab opened after logging in needs no token; logging out in one logs out both."""
    token = live_server.seeded.viewer_token
    login(page, token)
    assert wait_ready(page) == "ready", errors(page)
    other = browser_context.new_page()
    try:
        other.goto("/dashboard/models")
        assert wait_ready(other) == "ready", errors(other)
        assert other.evaluate("sessionStorage.getItem('itloop.token')") == token
        assert other.evaluate("localStorage.length") == 0  # never written to disk-backed storage
        other.click("#logout")
        other.wait_for_url("**/dashboard/login")
        page.wait_for_url("**/dashboard/login")
        assert page.evaluate("sessionStorage.getItem('itloop.token')") is None
    finally:
        other.close()
    # With no dashboard tab holding a token, a new tab goes to the login page.
    page.goto("/dashboard/days")
    page.wait_for_url("**/dashboard/login?next=*")


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
