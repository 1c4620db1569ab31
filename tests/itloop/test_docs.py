"""The docs stay self-contained and true: links resolve inside the repository, names match the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_link_resolves_inside_the_repository() -> None:
    bad = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                bad.append(f"{doc.name}: {target} (outside the repository)")
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{doc.name}: {target} (no such file in the repository)")
    assert not bad, "\n".join(bad)


def test_night_parameters_doc_names_every_field() -> None:
    from worker.steps.config import NightConfig

    text = (ROOT / "docs" / "night-parameters.md").read_text()
    assert [f for f in NightConfig.model_fields if f"`{f}`" not in text] == []


def test_science_doc_names_every_estimator() -> None:
    from models.sensitivity.records import ESTIMATORS

    text = (ROOT / "docs" / "science.md").read_text()
    assert [e for e in ESTIMATORS if f"`{e}`" not in text] == []


def test_readme_configuration_names_the_night_settings() -> None:
    text = (ROOT / "README.md").read_text()
    for name in ("ITLOOP_NIGHT_DEFAULTS", "ITLOOP_RIG_TIME", "ITLOOP_NIGHT_CANDIDATES"):
        assert f"| `{name}` |" in text, name


def test_cli_doc_lists_every_exit_code() -> None:
    from itloop.cli import EXIT_CODES

    text = (ROOT / "docs" / "cli.md").read_text()
    assert [c for c in EXIT_CODES if f"| {c} |" not in text] == []
