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
- ``benchmarks/`` never imports ``tests/``;
- no module-level import cycle among ``models``, ``server``, ``jobs``, ``worker`` and ``itloop``
  (here an import under ``TYPE_CHECKING`` does not count: it never runs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
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


CYCLE_FREE = ("models", "server", "jobs", "worker", "itloop")


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _executed_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that can run: top level and inside functions; not under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from _executed_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _executed_imports(node)


def import_graph(root: Path, packages: tuple[str, ...] = CYCLE_FREE) -> dict[str, set[str]]:
    """Module -> the project modules importing it runs first.

    ``from a.b import c`` points at the module ``a.b.c`` when there is one, else at ``a.b``; an
    import of ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so those count too (except
    the importer's own enclosing packages, which Python has already started by then).
    """
    mods = _modules(root, packages)

    def known(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, set[str]] = {}
    for mod, (path, is_package) in mods.items():
        package = mod if is_package else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in _executed_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                names = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            for name in names:
                target = known(name)
                if target is None:
                    continue
                parts = target.split(".")
                targets |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        graph[mod] = {t for t in targets if t in mods and t != mod and not mod.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    found = cycles(graph)
    detail = []
    for component in found:
        edges = "; ".join(f"{m} imports {sorted(graph[m] & set(component))}" for m in component)
        detail.append(" -> ".join(component) + "\n    " + edges)
    assert not found, "module import cycles (also through functions' imports):\n" + "\n".join(detail)


def test_the_cycle_check_sees_late_implicit_and_relative_imports(tmp_path: Path) -> None:
    """The check above would pass vacuously if the graph missed edges; it does not."""
    files = {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .. import other\n",
        "pkg/sub/leaf.py": "VALUE = 1\n",
        "pkg/other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.plain\n"
        "def late():\n    from pkg.sub.leaf import VALUE\n",
        "pkg/plain.py": "import pkg.other\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub"] == {"pkg.other"}  # relative; its own package pkg is not an edge
    assert graph["pkg.other"] == {"pkg.sub", "pkg.sub.leaf"}  # late, and pkg/sub/__init__ runs first
    assert graph["pkg.plain"] == {"pkg.other"}  # the TYPE_CHECKING import of plain never runs
    assert cycles(graph) == [["pkg.other", "pkg.sub"]]
    assert sum(map(len, import_graph(ROOT).values())) > 500  # and the real tree has edges to speak of
