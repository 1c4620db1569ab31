"""docs/setting-up-a-lab.md, run as written: every ``bash`` block, in order, against a real server.

The walk-through is the README's promise that a new lab can register itself, upload a day and run
a night from the docs alone; this test keeps that promise true. It also reads what a person sees
of ``itloop night`` (its stderr, rendered the way a terminal renders carriage returns) and checks
that no log line is glued to a progress-bar line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "setting-up-a-lab.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def bash_blocks(markdown: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(markdown)]


def terminal_lines(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: ``\\r`` returns to the line's start and overwrites."""
    lines: list[str] = []
    for physical in raw.split("\n"):
        shown: list[str] = []
        col = 0
        for chunk_i, chunk in enumerate(physical.split("\r")):
            if chunk_i:
                col = 0
            for ch in chunk:
                if col < len(shown):
                    shown[col] = ch
                else:
                    shown.append(ch)
                col += 1
        lines.append("".join(shown).rstrip())
    return lines


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def glued(lines: list[str]) -> list[str]:
    """Lines on which a log record and a progress bar share the line."""
    return [ln for ln in lines if LOG_LINE.search(ln) and ("%|" in ln or not LOG_LINE.match(ln))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_terminal_rendering_finds_a_glued_line() -> None:
    """The checker itself can fail: the bug the issue reported is caught."""
    raw = (
        "\rnight 4:   0%|          | 00:00 queued2026-11-30 12:15:44,365 INFO worker.night: night 4 planned\n"
    )
    assert glued(terminal_lines(raw))
    fine = (
        "\rnight 4:   0%|    | 00:00 queued\r                          \r2026-11-30 12:15:44,365 INFO x: y\n"
    )
    assert not glued(terminal_lines(fine))


@pytest.mark.slow
def test_setting_up_a_lab_runs_as_documented(tmp_path: Path) -> None:
    # The trap is the harness's, not the doc's: a failing step must not leave the server running.
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(
        bash_blocks(DOC.read_text())
    )
    assert "itloop -v night" in script and "curl" in script and "/nights" in script
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITLOOP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["PORT"] = str(_free_port())
    env["ITLOOP_RIG_TIME"] = ""  # no wall-clock deadline: the night must not race the clock
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    serve_log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert r.returncode == 0, (
        f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}\nserve:\n{serve_log[-3000:]}"
    )
    assert "Traceback" not in r.stderr + r.stdout
    health = json.loads((tmp_path / "health.json").read_text())
    assert health["status"] == "ok" and health["schema"] == "current"
    assert re.search(r"^night \d+: succeeded$", r.stdout, re.MULTILINE), r.stdout[-2000:]
    assert re.search(r"INFO worker.night: night \d+ succeeded$", r.stdout, re.MULTILINE)
    assert re.search(r"^422$", r.stdout, re.MULTILINE), r.stdout[-2000:]  # the misspelt estimator
    day1 = json.loads((tmp_path / "day1.json").read_text())
    assert (
        day1["model_version"]
        and day1["batch_id"] != json.loads((tmp_path / "day0.json").read_text())["batch_id"]
    )
    night_cli = (tmp_path / "night-cli.log").read_bytes().decode()  # keeps carriage returns
    assert "%|" in night_cli, night_cli[-2000:]  # the progress bar was drawn
    assert re.search(r"INFO worker.execute: job \d+ .* started", night_cli)  # -v: logs during the bar
    lines = terminal_lines(night_cli)
    assert not glued(lines), "\n".join(glued(lines))
    assert "Traceback" not in night_cli
