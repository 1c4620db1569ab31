"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation gets schema-valid ("positive") and schema-violating ("negative") requests with an
admin token, in-process against a fresh SQLite database. Checks on every response:

* never a 5xx;
* a status the schema documents is checked by schemathesis for content type and body schema
  (errors: 401, 403, 404 and 422 are documented as ``ErrorBody``, see ``server/openapi.py``);
* any other status must be one of the API's error codes with a JSON ``{"detail": "..."}`` body
  (the contract in DESIGN.md says every error is such a JSON body with a 4xx code).

Bounded: ``EXAMPLES`` per operation and mode, no per-example deadline, derandomised (the same
cases every run, so a failure reproduces), and at least ``MIN_CASES`` cases in total.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.python.asgi import get_client
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from itloop.settings import get_settings
from tests.conftest import _install_settings, make_settings, new_database

# Fuzzes every route from the OpenAPI document: left out of `make test-fast`.
pytestmark = pytest.mark.slow

EXAMPLES = 12
MIN_CASES = 1000
# Known, reported issue: on SQLite, timestamps come back naive and are serialised without an offset,
# which RFC 3339 "date-time" (the schema's format) does not allow. Collected and printed, not failed.
NAIVE_DATETIME = re.compile(
    r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?" is not (a "date-time"|valid under any of the)'
)
KNOWN_ISSUES: set[str] = set()
# Known, reported bugs (see docs/benchmarks.md, "Reliability findings"); printed, not failed.
KNOWN_STATUS = {
    ("POST", "/api/v1/nights", 503): "SQLite: starting a night while the in-process runner writes fails "
    "with 'database is locked' (read-then-write without the write lock)",
}
ERROR_CODES = {400, 401, 403, 404, 405, 409, 413, 415, 422}
# A night started by a fuzzed request would train models in-process; its inputs are still fuzzed
# (a missing session is a 404 before anything runs), so it stays in, with a session that never exists.


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """The app on a brand-new SQLite database, with an admin token."""
    from server.app import create_app
    from server.auth import service
    from server.db.engine import get_engine, session_scope

    folder = tmp_path_factory.mktemp("schema-fuzz")
    url, cleanup = new_database("sqlite", folder, "fuzz")
    s = make_settings(url, folder / "data", log_level="WARNING")
    with pytest.MonkeyPatch.context() as mp:
        _install_settings(s, mp)
        with session_scope(url) as db:
            token = service.create_token(
                session=db, user=service.create_user(session=db, name="fz", role="admin")
            )
        yield create_app(s), {"Authorization": f"Bearer {token}"}
    get_settings.cache_clear()
    get_engine(url).dispose()
    cleanup()


def _check(case: Any, response: Any) -> str | None:
    """None if the response is acceptable, else what is wrong."""
    code = response.status_code
    where = f"{case.method} {case.formatted_path} -> {code}"
    known = KNOWN_STATUS.get((case.method.upper(), case.operation.path, code))
    if known is not None:
        KNOWN_ISSUES.add(f"{case.method.upper()} {case.operation.path} -> {code}: {known}")
        return None
    if code >= 500:
        return f"{where}: server error {response.text[:300]}"
    documented = {str(c) for c in case.operation.responses.status_codes}
    if str(code) in documented:
        try:
            case.validate_response(response, checks=[content_type_conformance, response_schema_conformance])
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a FailureGroup
            problems = [line for line in str(exc).splitlines() if " is not " in line]
            if problems and all(NAIVE_DATETIME.search(p) for p in problems):
                KNOWN_ISSUES.add(f"{case.operation.label}: timestamps without a UTC offset")
                return None
            return f"{where}: does not conform to the schema: {str(exc)[:600]}"
        return None
    if code not in ERROR_CODES:
        return f"{where}: undocumented status (documented {sorted(documented)})"
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if not content_type.startswith("application/json"):
        return f"{where}: error without a JSON body ({content_type})"
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str) or not body["detail"]:
        return f"{where}: error body is not {{'detail': str}}: {response.text[:200]}"
    return None


def _runner(
    operation: Any, mode: GenerationMode, label: str, session: Any, counts: dict, failures: list
) -> Any:
    """A hypothesis test of one operation in one generation mode (closes over its label)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: one bad case is enough to report
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        counts[label] += 1
        response = case.call(session=session)
        problem = _check(case, response)
        if problem is not None:
            failures.append(problem)
            raise AssertionError(problem)  # let hypothesis shrink it

    return run


def test_api_survives_schema_fuzzing(api: tuple[Any, dict[str, str]]) -> None:
    app, headers = api
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    session = get_client(app)  # one in-process client for every call
    session.headers.update(headers)
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} [{mode.value}]"
            counts[label] = 0

            run = _runner(operation, mode, label, session, counts, failures)
            try:
                run()
            except AssertionError:
                pass  # recorded in failures; keep fuzzing the other operations
            except Exception as exc:  # e.g. no negative case exists for this operation
                if "Unsatisfiable" not in type(exc).__name__:
                    failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
    total = sum(counts.values())
    elapsed = time.monotonic() - started
    print(f"schema fuzzing: {total} cases over {len(counts)} operation/mode pairs in {elapsed:.0f} s")  # noqa: T201
    for issue in sorted(KNOWN_ISSUES):
        print(f"known issue: {issue}")  # noqa: T201
    assert not failures, f"{len(failures)} failures in {total} cases:\n" + "\n".join(dict.fromkeys(failures))
    assert total >= MIN_CASES, f"only {total} cases generated in {elapsed:.0f} s: {counts}"
