"""Every route against every role: the access table is the contract, and new routes must join it.

Routes are enumerated from the live app (the OpenAPI paths plus the routes kept out of the
schema), never from a hand list, so a route added without a row in ``ACCESS`` fails here.
"Allowed" means neither 401 nor 403 (404 and 422 from dummy ids or missing bodies are fine);
"denied" means 403; no token means 401 for everything but the public, data-free routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tests.conftest import ROLES

ADMIN = frozenset({"admin"})
EXPERIMENTER = frozenset({"admin", "experimenter"})
VIEWER = frozenset({"admin", "experimenter", "viewer"})
RIG = frozenset({"admin", "rig"})
BATCH_READER = frozenset({"admin", "experimenter", "viewer", "rig"})
ANY_USER = frozenset(ROLES)
PUBLIC = None  # no token needed; such routes must carry no lab data

V1 = "/api/v1"
ACCESS: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", f"{V1}/health"): PUBLIC,
    ("GET", f"{V1}/me"): ANY_USER,
    ("POST", f"{V1}/users"): ADMIN,
    ("POST", f"{V1}/users/{{name}}/tokens"): ADMIN,
    ("DELETE", f"{V1}/tokens/{{prefix}}"): ADMIN,
    ("POST", f"{V1}/subjects"): EXPERIMENTER,
    ("GET", f"{V1}/subjects"): VIEWER,
    ("GET", f"{V1}/subjects/{{name}}"): VIEWER,
    ("POST", f"{V1}/subjects/{{name}}/arrays"): EXPERIMENTER,
    ("GET", f"{V1}/subjects/{{name}}/arrays"): VIEWER,
    ("POST", f"{V1}/arrays"): EXPERIMENTER,
    ("GET", f"{V1}/arrays"): VIEWER,
    ("POST", f"{V1}/sites"): EXPERIMENTER,
    ("GET", f"{V1}/sites"): VIEWER,
    ("GET", f"{V1}/sites/{{site_id}}"): VIEWER,
    ("POST", f"{V1}/rigs"): ADMIN,
    ("GET", f"{V1}/rigs"): ANY_USER,
    ("GET", f"{V1}/rigs/{{rig_id}}"): ANY_USER,
    ("GET", f"{V1}/images/{{sha256}}"): BATCH_READER,
    ("GET", f"{V1}/images/{{sha256}}/lineage"): VIEWER,
    ("POST", f"{V1}/image-sets"): EXPERIMENTER,
    ("GET", f"{V1}/image-sets"): VIEWER,
    ("GET", f"{V1}/image-sets/{{name}}"): VIEWER,
    ("POST", f"{V1}/image-sets/{{name}}/withdraw"): EXPERIMENTER,
    ("GET", f"{V1}/rigs/{{rig_id}}/batches/next"): RIG,
    ("POST", f"{V1}/rigs/{{rig_id}}/batches/initial"): EXPERIMENTER,
    ("GET", f"{V1}/batches"): VIEWER,
    ("GET", f"{V1}/batches/{{batch_id}}"): BATCH_READER,
    ("GET", f"{V1}/batches/{{batch_id}}/bundle"): BATCH_READER,
    ("POST", f"{V1}/batches/{{batch_id}}/presentations"): RIG,
    ("POST", f"{V1}/batches/{{batch_id}}/complete"): RIG,
    ("POST", f"{V1}/sessions"): EXPERIMENTER,
    ("GET", f"{V1}/sessions"): VIEWER,
    ("GET", f"{V1}/sessions/{{session_id}}"): VIEWER,
    ("POST", f"{V1}/sessions/{{session_id}}/complete"): EXPERIMENTER,
    ("POST", f"{V1}/sessions/{{session_id}}/spikes"): EXPERIMENTER,
    ("GET", f"{V1}/sessions/{{session_id}}/responses"): VIEWER,
    ("GET", f"{V1}/sessions/{{session_id}}/export.nwb"): VIEWER,
    ("GET", f"{V1}/sessions/{{session_id}}/responses.nc"): VIEWER,
    ("GET", f"{V1}/sessions/{{session_id}}/stimulus_set.csv"): VIEWER,
    ("GET", f"{V1}/sessions/{{session_id}}/stimulus_set.zip"): VIEWER,
    ("GET", f"{V1}/model-versions"): VIEWER,
    ("GET", f"{V1}/model-versions/sites/{{site_id}}/history"): VIEWER,
    ("GET", f"{V1}/model-versions/{{version}}"): VIEWER,
    ("GET", f"{V1}/jobs"): VIEWER,
    ("GET", f"{V1}/jobs/{{job_id}}"): VIEWER,
    ("POST", f"{V1}/jobs/{{job_id}}/cancel"): EXPERIMENTER,
    ("GET", f"{V1}/nights"): VIEWER,
    ("POST", f"{V1}/nights"): EXPERIMENTER,
    ("GET", f"{V1}/nights/{{night_id}}"): VIEWER,
    ("GET", f"{V1}/analysis/sensitivity"): VIEWER,
    ("GET", f"{V1}/analysis/sensitivity/summary"): VIEWER,
    # Out of the schema: the schema itself, the API docs page and the dashboard's HTML shells
    # and static assets, which carry no data (the pages fetch it from the API with a token).
    ("GET", f"{V1}/openapi.json"): PUBLIC,
    ("GET", f"{V1}/docs"): PUBLIC,
    ("GET", f"{V1}/docs/assets/{{name}}"): PUBLIC,
    ("GET", "/"): PUBLIC,  # a redirect to /dashboard/
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/dashboard/"): PUBLIC,
    ("GET", "/dashboard/login"): PUBLIC,
    ("GET", "/dashboard/sensitivity"): PUBLIC,
    ("GET", "/dashboard/models"): PUBLIC,
    ("GET", "/dashboard/images"): PUBLIC,
    ("GET", "/dashboard/days"): PUBLIC,
    ("GET", "/dashboard/vendor/plotly.min.js"): PUBLIC,
    ("GET", "/dashboard/static/{path}"): PUBLIC,
}

# Dummy values for path parameters, by OpenAPI type.
DUMMY = {"integer": "987654", "string": "dummy-1"}
PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _walk(routes: list[Any]) -> Iterator[Any]:
    """Flatten routers included into routers (FastAPI >= 0.16x nests them lazily)."""
    for route in routes:
        nested = getattr(route, "effective_candidates", None)
        if callable(nested):
            yield from _walk(nested())
        else:
            yield route


def enumerate_routes(app: FastAPI) -> dict[tuple[str, str], dict[str, str]]:
    """Every (method, path template) the app serves, with a dummy value per path parameter."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for path, operations in app.openapi()["paths"].items():
        for method, op in operations.items():
            params = {
                p["name"]: DUMMY.get(p.get("schema", {}).get("type", "string"), DUMMY["string"])
                for p in op.get("parameters", [])
                if p.get("in") == "path"
            }
            out[(method.upper(), path)] = params
    for route in _walk(app.routes):
        path = getattr(route, "path", None)
        if path is None:
            continue
        original = getattr(route, "original_route", route)
        methods = getattr(original, "methods", None)
        if methods is None and hasattr(route, "app"):  # a mount (static files): served by GET
            path, methods = path.rstrip("/") + "/{path}", {"GET"}
        for method in sorted(set(methods or ()) - {"HEAD"}):
            template = PARAM.sub(lambda m: "{" + m.group(1) + "}", path)
            if (method, template) not in out:
                out[(method, template)] = {name: DUMMY["string"] for name in PARAM.findall(path)}
    return out


def _url(template: str, params: dict[str, str]) -> str:
    if template == "/dashboard/static/{path}":
        return "/dashboard/static/dashboard.css"
    if template == f"{V1}/docs/assets/{{name}}":
        return f"{V1}/docs/assets/swagger-ui-bundle.js"
    return PARAM.sub(lambda m: params[m.group(1)], template)


def test_every_route_is_classified(client) -> None:
    """A route without a row here is a route nobody decided the access of."""
    served = set(enumerate_routes(client.app))
    missing = sorted(served - set(ACCESS))
    stale = sorted(set(ACCESS) - served)
    assert not missing, f"classify these routes in ACCESS: {missing}"
    assert not stale, f"these ACCESS rows name routes the app no longer serves: {stale}"


def test_every_route_against_every_role(client, tokens) -> None:
    routes = enumerate_routes(client.app)
    failures: list[str] = []
    principals: list[tuple[str, dict[str, str]]] = [
        ("no token", {}),
        ("bogus token", {"Authorization": "Bearer itl_notARealToken0123456789"}),
        *((role, {"Authorization": f"Bearer {tokens[role]}"}) for role in ROLES),
    ]
    for (method, template), params in sorted(routes.items()):
        if (method, template) not in ACCESS:
            continue  # reported by test_every_route_is_classified
        allowed = ACCESS[(method, template)]
        if allowed is PUBLIC:
            continue  # test_public_routes_need_no_token_and_carry_no_data
        url = _url(template, params)
        for who, headers in principals:
            r = client.request(method, url, headers=headers, follow_redirects=False)
            code = r.status_code
            if r.status_code >= 500:
                failures.append(f"{method} {url} as {who}: {code} {r.text[:200]}")
                continue
            if who in ("no token", "bogus token"):
                ok = code == 401 and r.headers.get("content-type", "").startswith("application/json")
                ok = ok and "detail" in r.json() and r.headers.get("www-authenticate") == "Bearer"
            elif who in allowed:
                ok = code not in (401, 403)
            else:
                ok = code == 403 and "may not" in r.json().get("detail", "")
            if not ok:
                expect = (
                    "public" if allowed is PUBLIC else ("allowed" if who in (allowed or ()) else "denied")
                )
                failures.append(f"{method} {url} as {who}: got {code}, expected {expect}: {r.text[:120]}")
    assert not failures, "\n".join(failures)


def test_public_routes_need_no_token_and_carry_no_data(fresh_db_url: str, tmp_path: Path) -> None:
    """The public routes answer without a token, and are shells: no token or lab name leaks into them.

    Runs on its own committed database (not the rolled-back test transaction, whose write lock
    would make the health check wait on SQLite).
    """
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.auth import service
    from server.db.engine import session_scope
    from server.lab.tables import Subject
    from tests.conftest import make_settings

    with session_scope(fresh_db_url) as db:
        user = service.create_user(session=db, name="leak-check", role="admin")
        token = service.create_token(session=db, user=user)
        db.add(Subject(name="secret-subject-name-123"))
    app = create_app(make_settings(fresh_db_url, tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get(f"{V1}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        for (method, template), params in sorted(enumerate_routes(app).items()):
            if ACCESS.get((method, template), ()) is not PUBLIC:
                continue
            r = client.request(method, _url(template, params), follow_redirects=False)
            assert r.status_code < 400, (template, r.status_code, r.text[:200])
            assert token not in r.text and "secret-subject-name-123" not in r.text, template
