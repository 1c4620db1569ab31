"""docker-compose.yml cannot run here (no Docker engine): check its parts against the code instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from itloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_health_checks() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis", "minio", "api", "worker", "prestart"):
        assert name in services, name
    for name in ("postgres", "redis", "api", "minio"):
        assert "healthcheck" in services[name], name
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["api"]["depends_on"]["prestart"]["condition"] == "service_completed_successfully"


def test_environment_names_are_real_settings() -> None:
    env = _compose()["x-itloop-env"]
    fields = {f"ITLOOP_{name.upper()}" for name in Settings.model_fields}
    for key in env:
        if key.startswith("ITLOOP_"):
            assert key in fields, f"{key} is not a setting"


def test_commands_are_real_cli_commands() -> None:
    from typer.main import get_command

    from itloop.cli import app

    cli = get_command(app)
    for service in _compose()["services"].values():
        cmd = service.get("command")
        if isinstance(cmd, list) and cmd[0] == "itloop":
            assert cmd[1] in cli.commands, cmd  # type: ignore[attr-defined]
    prestart = (ROOT / "scripts" / "prestart.sh").read_text()
    assert "itloop db upgrade" in prestart


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, flags=re.M))
    for pkg in ("itloop", "server", "worker", "models", "migrations"):
        assert pkg in copied
    for pkg in copied:
        assert (ROOT / pkg).exists(), f"Dockerfile copies missing folder {pkg}"
