"""The dashboard's server side: public HTML shells, Plotly from the installed package, no API leak."""

from __future__ import annotations

import gzip
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


def test_plotly_and_static_files_are_sent_gzipped(client: Any) -> None:
    """The 4.85 MB bundle travels gzipped to browsers that ask (and whole to those that do not)."""
    raw = plotly_js_path().read_bytes()  # type: ignore[union-attr]
    with client.stream("GET", "/dashboard/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip" and "Accept-Encoding" in r.headers["vary"]
        wire = b"".join(r.iter_raw())
    assert len(wire) < 0.35 * len(raw), (len(wire), len(raw))
    assert gzip.decompress(wire) == raw
    plain = client.get("/dashboard/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == raw
    refused = client.get("/dashboard/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    again = client.get("/dashboard/vendor/plotly.min.js", headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304 and not again.content
    for name in ("itloop.js", "dashboard.css"):
        with client.stream("GET", f"/dashboard/static/{name}", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status_code == 200 and r.headers["content-encoding"] == "gzip", name
            wire = b"".join(r.iter_raw())
        assert len(wire) < 0.6 * len(gzip.decompress(wire)), name
    # The API itself is not wrapped (its ETags and streams are its own business).
    assert "content-encoding" not in client.get("/health", headers={"Accept-Encoding": "gzip"}).headers
