"""``itloop night``: start a recording day's night from the shell, parameters checked first.

The parameters (a JSON/YAML file and ``--param key=value``, which win) get the same checks
``POST /nights`` makes, before anything starts, so a typo is exit 2 naming the parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from itloop.commands.common import EXIT_USAGE, fail, require_schema
from itloop.settings import get_settings


def parse_param(item: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON when it parses (``4``, ``[1, 2]``, ``false``), else text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        fail(f"--param {item!r}: expected key=value (e.g. --param restarts=8)", EXIT_USAGE)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def read_params_file(path: Path) -> dict[str, Any]:
    """A JSON or YAML object of night parameters (by suffix: .json, .yaml/.yml)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"--params-file {path}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fail(
            f"--params-file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}",
            EXIT_USAGE,
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        fail(
            f"--params-file {path}: expected an object of night parameters, got {type(data).__name__}",
            EXIT_USAGE,
        )
    return data


def night_params(params: list[str], params_file: Path | None) -> dict[str, Any]:
    """The night's parameters from a file and ``--param`` (which win), checked against NightConfig.

    The same checks ``POST /nights`` makes, here before anything starts: unknown names and
    impossible values are refused naming the parameter (exit 2).
    """
    from itloop.night_params import NightConfig

    merged: dict[str, Any] = read_params_file(params_file) if params_file is not None else {}
    merged.update(dict(parse_param(p) for p in params))
    unknown = NightConfig.unknown_keys(merged)
    if unknown:
        fail(
            f"unknown night parameter(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(NightConfig.model_fields))} (docs/night-parameters.md)",
            EXIT_USAGE,
        )
    try:
        cfg = NightConfig.from_params(merged, get_settings().night_defaults)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        fail(f"night parameters: {problems}", EXIT_USAGE)
    from itloop.errors import InvalidInput
    from worker.candidates import resolve

    for spec in cfg.candidates or []:
        try:
            resolve(spec)
        except InvalidInput as exc:
            fail(exc.detail, EXIT_USAGE)
    return merged


def night(
    session: Annotated[str, typer.Option("--session", help="recording session id of the day")],
    wait: Annotated[bool, typer.Option(help="run/wait until the night finishes, with progress")] = True,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="a night parameter as key=value (JSON values), repeatable"),
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params-file", help="night parameters as a JSON or YAML object")
    ] = None,
) -> None:
    """Start the nightly pipeline for a recording session (parameters: docs/night-parameters.md)."""
    from itloop.errors import InvalidInput, ItloopError
    from worker.night import run_night_cli

    settings = get_settings()
    params = night_params(param or [], params_file)
    require_schema(settings)
    try:
        code = run_night_cli(settings, session_id=session, wait=wait, params=params)
    except InvalidInput as exc:
        fail(exc.detail, EXIT_USAGE)
    except ItloopError as exc:
        fail(exc.detail)
    raise typer.Exit(code)
