"""The dashboard's server side: public HTML shells, Plotly from the installed package, no API leak."""

from __future__ import annotations

from typing import Any

from server.dashboard.views import PAGES, plotly_js_path


def test_pages_are_public_shells_without_data(client: Any) -> None:
    for path, _, title in PAGES:
        r = client.get("/dashboard" + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        assert f"<title>{title}" in r.text
        assert "/dashboard/static/itloop.js" in r.text
    assert client.get("/dashboard/login").status_code == 200
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/dashboard/"


def test_plotly_is_served_from_the_installed_package(client: Any) -> None:
    path = plotly_js_path()
    assert path is not None and path.is_file()
    r = client.get("/dashboard/vendor/plotly.min.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert len(r.content) == path.stat().st_size
    assert client.get("/dashboard/static/dashboard.css").status_code == 200
    assert client.get("/dashboard/static/nope.js").status_code == 404


def test_dashboard_is_not_part_of_the_api_schema(client: Any) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]
