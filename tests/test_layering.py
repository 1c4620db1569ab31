"""The architecture of the README, enforced: who may import whom.

Every import statement counts, also those inside functions and under ``TYPE_CHECKING`` (an
import made late to dodge a cycle is still a dependency):

- ``models/`` is pure science: the standard library, numpy/scipy/torch-level libraries and
  itself; no SQL, no HTTP, no project package;
- ``server/`` imports nothing from ``jobs/`` or ``worker/`` except the seam ``worker/api.py``;
- ``jobs/`` (the job system) depends only on the database layer (``server.db``, the job tables)
  and the shared base (``itloop.settings``, ``itloop.errors``, ``itloop.storage``,
  ``itloop.logging``); it never imports the night (``worker``) or the science (``models``);
- the job system and the night never pull in the web framework (checked in a fresh process);
- ``benchmarks/`` never imports ``tests/``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS_MAY_IMPORT = {"numpy", "scipy", "torch", "torchvision", "PIL"}
JOBS_MAY_IMPORT_FROM_PROJECT = (
    "jobs",
    "server.db",
    "server.jobs.tables",
    "itloop.settings",
    "itloop.errors",
    "itloop.storage",
    "itloop.logging",
)
PROJECT = {"models", "server", "jobs", "worker", "itloop", "demo", "rigclient", "benchmarks", "tests"}


def imports(folder: str) -> list[tuple[str, int, str]]:
    """(file, line, absolute module) for every import statement under ``folder``."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT)
        package = ".".join(rel.with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [(str(rel), node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the file's package
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                # "from worker import api" imports the module worker.api
                found += [
                    (str(rel), node.lineno, f"{module}.{alias.name}" if module in PROJECT else module)
                    for alias in node.names
                ]
    return found


def _within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def test_models_import_only_science_libraries() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{f}:{line} imports {m}"
        for f, line, m in imports("models")
        if m.split(".")[0] not in stdlib | MODELS_MAY_IMPORT | {"models"}
    ]
    assert not bad, "models/ must stay pure:\n" + "\n".join(bad)


def test_server_reaches_the_job_system_only_through_the_seam() -> None:
    bad = [
        f"{f}:{line} imports {m}"
        for f, line, m in imports("server")
        if m.split(".")[0] in ("worker", "jobs") and m != "worker.api"
    ]
    assert not bad, "server/ may import only worker.api from worker/ and jobs/:\n" + "\n".join(bad)


def test_job_package_depends_only_on_the_database_layer() -> None:
    bad = [
        f"{f}:{line} imports {m}"
        for f, line, m in imports("jobs")
        if m.split(".")[0] in PROJECT and not _within(m, JOBS_MAY_IMPORT_FROM_PROJECT)
    ]
    assert not bad, "jobs/ depends only on the database layer:\n" + "\n".join(bad)


def test_benchmarks_do_not_import_the_tests() -> None:
    bad = [f"{f}:{line} imports {m}" for f, line, m in imports("benchmarks") if m.split(".")[0] == "tests"]
    assert not bad, "benchmarks/ must run without the test suite:\n" + "\n".join(bad)


def test_the_worker_side_never_loads_the_web_framework() -> None:
    code = (
        "import sys, jobs.runner, jobs.liveness, worker.night, worker.stages\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette'))\n"
        "print(','.join(web))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the worker side imports the web framework: {out.stdout}"


def test_the_walker_sees_late_and_relative_imports(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the walker missed imports; it does not."""
    found = {m for _, _, m in imports("models")}
    assert "numpy" in found and "torch" in found
    assert any(m.startswith("models.synthesis") for m in found)  # relative imports resolved
    late = {m for f, _, m in imports("jobs") if f.endswith("context.py")}
    assert "itloop.storage" in late  # imported inside a method
