"""The OpenAPI document tells the truth about errors: every error is ``ErrorBody``.

The spec is checked as served (``/api/v1/openapi.json``), and real error responses are validated
against the schema the spec advertises for their operation and status.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from server.errors import ErrorBody

API = "/api/v1"
ERROR_REF = "#/components/schemas/ErrorBody"


def _spec(client: Any) -> dict[str, Any]:
    r = client.get(f"{API}/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def _advertised(spec: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The JSON schema the spec gives for that response, with its components to resolve refs."""
    response = spec["paths"][path][method.lower()]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def _conforms(spec: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    schema = _advertised(spec, method, path, status)
    problems = [e.message for e in Draft202012Validator(schema).iter_errors(body)]
    assert not problems, (method, path, status, body, problems)


def test_every_422_is_the_error_body_and_fastapis_default_is_gone(client) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in spec["components"]["schemas"]
    body = spec["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["detail"] and body["properties"]["detail"]["type"] == "string"
    item = spec["components"]["schemas"]["ValidationIssue"]
    assert set(item["required"]) == {"loc", "msg", "type"}

    create_subject = spec["paths"][f"{API}/subjects"]["post"]["responses"]["422"]
    assert create_subject["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    with_422 = [(m, p, op) for m, p, op in _operations(spec) if "422" in op["responses"]]
    assert len(with_422) > 30
    for method, path, op in with_422:
        content = op["responses"]["422"]["content"]
        assert content == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (method, path)


def test_auth_not_found_and_too_large_errors_are_documented(client) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    for method, path, op in _operations(spec):
        codes = set(op["responses"])
        if path == f"{API}/health":
            assert not codes & {"401", "403", "422", "429"}
            continue
        assert {"401", "403", "429"} <= codes, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        # Bodies are bounded (server.body_limit) on every method that may carry one.
        assert ("413" in codes) == (method != "GET"), (method, path)
        for code in codes & {"401", "403", "404", "413", "422", "429"}:
            assert op["responses"][code]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    # A description a route gave itself is kept.
    image = spec["paths"][f"{API}/images/{{sha256}}"]["get"]["responses"]
    assert image["404"]["description"] == "unknown hash"


def test_real_error_bodies_match_the_advertised_schema(client, auth) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    subjects = f"{API}/subjects"

    # Request validation: several problems, each listed in `errors`.
    r = client.post(subjects, json={"name": 5, "species": ["x"]}, headers=auth("experimenter"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["errors"] and all({"loc", "msg", "type"} <= set(e) for e in body["errors"])
    assert body["errors"][0]["loc"][0] == "body"
    _conforms(spec, "POST", subjects, 422, body)
    ErrorBody.model_validate(body)

    # A malformed JSON body is a validation error too; its `loc` holds the offset, an integer.
    r = client.post(
        subjects, content=b"{not json", headers={**auth("experimenter"), "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert any(isinstance(part, int) for part in r.json()["errors"][0]["loc"])
    _conforms(spec, "POST", subjects, 422, r.json())

    # A query parameter out of range.
    r = client.get(f"{subjects}?limit=0", headers=auth("viewer"))
    assert r.status_code == 422, r.text
    _conforms(spec, "GET", subjects, 422, r.json())

    r = client.post(subjects, json={"name": "m-openapi"})
    assert r.status_code == 401, r.text
    _conforms(spec, "POST", subjects, 401, r.json())

    r = client.post(subjects, json={"name": "m-openapi"}, headers=auth("viewer"))
    assert r.status_code == 403, r.text
    _conforms(spec, "POST", subjects, 403, r.json())

    r = client.get(f"{subjects}/no-such-subject", headers=auth("viewer"))
    assert r.status_code == 404, r.text
    _conforms(spec, "GET", f"{subjects}/{{name}}", 404, r.json())


def test_error_body_allows_the_string_items_routes_send() -> None:
    """Presentation events are validated by the route, which lists one string per bad item."""
    body = {"detail": "item 0: seq 9 is not in the batch's sequence", "errors": ["item 0: ..."]}
    assert ErrorBody.model_validate(body).errors == ["item 0: ..."]
    schema = ErrorBody.model_json_schema()
    assert not list(Draft202012Validator(schema).iter_errors(body))
    assert list(Draft202012Validator(schema).iter_errors({"detail": ["not", "a", "string"]}))
