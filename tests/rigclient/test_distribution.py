"""rigclient builds as its own wheel that needs only httpx, and imports without the server's packages."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "rigclient"
    shutil.copytree(ROOT / "rigclient", src, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


def test_wheel_holds_only_the_client_and_needs_only_httpx(tmp_path: Path) -> None:
    wheel = _build(tmp_path)
    assert wheel.name.startswith("itloop_rigclient-0.2.0-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"rigclient", "itloop_rigclient-0.2.0.dist-info"}
    assert {"rigclient/poster.py", "rigclient/client.py", "rigclient/recipes/psychopy_rsvp.py"} <= set(names)
    assert "rigclient/recipes/itloop_fetch.m" in names
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert len(requires) == 1 and requires[0].startswith("Requires-Dist: httpx")

    # Import it with only httpx and its own dependencies on the path: no server, models, numpy.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    deps = []
    for mod in ("httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio", "typing_extensions"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin:
            origin = Path(spec.origin)
            deps.append(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
    probe = (
        "import sys, rigclient\n"
        "from rigclient import EventPoster, RigClient, frames\n"
        "heavy = ('server', 'models', 'worker', 'itloop', 'numpy', 'fastapi')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('server') is None\n"
        "print(rigclient.__version__, rigclient.__file__)\n"
    )
    isolated = tmp_path / "isolated"
    isolated.mkdir()
    for d in dict.fromkeys(deps):
        for item in d.iterdir():
            if item.name.split(".")[0].split("-")[0] in {
                "httpx",
                "httpcore",
                "h11",
                "anyio",
                "idna",
                "certifi",
                "sniffio",
                "typing_extensions",
            }:
                target = isolated / item.name
                if not target.exists():
                    target.symlink_to(item)
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path[:0] = [{str(site)!r}, {str(isolated)!r}]\n" + probe,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0.2.0") and str(site) in r.stdout
