"""Bad night parameters are refused at ``POST /nights`` with a 422 naming them, before any job runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.jobs.tables import Job, Night
from server.lab.tables import Subject
from server.recordings.tables import RecordingSession


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"epsilon": [1.0]}, "epsilon"),  # misspelt: would silently run the default epsilons
        ({"candidates": ["resnet18"]}, "resnet18"),
        ({"candidates": ["small_cnn", "nonesuch"]}, "nonesuch"),
        ({"search_share": 1.5}, "search_share"),
        ({"search_share": -0.1}, "search_share"),
        ({"min_transfer_pairs": 0}, "min_transfer_pairs"),
        ({"repeats": 0}, "repeats"),
        ({"directions": ["sideways"]}, "directions"),
        ({"epsilons": []}, "epsilons"),
        ({"precision": "fp16"}, "precision"),
        (
            {
                "candidates": [
                    {"name": "m", "backbone": "vone_energy", "layer": "output", "fit": "factorised"}
                ]
            },
            "factorised",
        ),
        (
            {
                "candidates": [
                    {"name": "m", "backbone": "vone_energy", "layer": "output", "fit": "factorized"}
                ]
            },
            "grid",
        ),
        (
            {
                "candidates": [
                    {
                        "name": "m",
                        "backbone": "vone_energy",
                        "layer": "output",
                        "fit": "blend",
                        "kwargs": {"grid": [2]},
                    }
                ]
            },
            "blend needs",
        ),
    ],
)
def test_bad_night_params_are_refused_up_front(
    client,
    auth: Callable[[str], dict[str, str]],
    db_session: Session,
    worker_env: None,
    params: dict,
    named: str,
) -> None:
    subject = Subject(name="params-monkey")
    db_session.add(subject)
    db_session.flush()
    db_session.add(RecordingSession(session_id="params-day", subject_id=subject.id))
    db_session.commit()
    nights = db_session.scalar(select(func.count(Night.id)))
    jobs = db_session.scalar(select(func.count(Job.id)))

    r = client.post(
        "/api/v1/nights", json={"session_id": "params-day", "params": params}, headers=auth("experimenter")
    )
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]
    assert db_session.scalar(select(func.count(Night.id))) == nights
    assert db_session.scalar(select(func.count(Job.id))) == jobs


def test_night_params_are_typed_and_documented_in_the_openapi(client) -> None:
    """POST /nights takes NightParams: every field described, unknown keys refused by the schema."""
    doc = client.get("/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = schemas["NightCreate"]["properties"]["params"]
    assert "NightParams" in str(body)
    params = schemas["NightParams"]
    assert params.get("additionalProperties") is False
    undocumented = [k for k, v in params["properties"].items() if not v.get("description")]
    assert not undocumented and {"epsilons", "candidates", "deadline"} <= set(params["properties"])


def test_lab_night_defaults_are_checked_at_start_up(tmp_path) -> None:
    """ITLOOP_NIGHT_DEFAULTS with a typo or an impossible value refuses to start, naming both."""
    from typer.testing import CliRunner

    from itloop.cli import app
    from itloop.settings import get_settings

    get_settings.cache_clear()  # read the environment below, not settings an earlier test cached
    env = {"ITLOOP_DATA_DIR": str(tmp_path), "ITLOOP_NIGHT_DEFAULTS": '{"epsilon": [1], "repeats": 0}'}
    try:
        result = CliRunner().invoke(app, ["db", "check"], env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "ITLOOP_NIGHT_DEFAULTS" in result.output
    assert "epsilon: unknown parameter" in result.output and "repeats" in result.output
    assert "Traceback" not in result.output


def test_every_night_parameter_is_in_the_docs() -> None:
    """docs/night-parameters.md lists every field of NightParams (and no field it does not have)."""
    import re
    from pathlib import Path

    from itloop.night_params import NightParams

    doc = (Path(__file__).resolve().parents[2] / "docs" / "night-parameters.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.M))
    assert listed == set(NightParams.model_fields)


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [("fp32", "cuda", None), ("bf16", "cuda", "bfloat16"), ("bf16", "cpu", None)],
)
def test_bf16_precision_reaches_the_engine_only_on_a_gpu(
    precision: str, device: str, expected: str | None
) -> None:
    """The night's ``precision`` becomes the engine's autocast on a GPU; a CPU always runs fp32."""
    import torch

    from itloop.night_params import NightConfig
    from worker.stages.synth import _synthesis_config

    cfg = _synthesis_config(NightConfig(precision=precision), torch.device(device))
    assert cfg.autocast_dtype == (getattr(torch, expected) if expected else None)
    assert cfg.restarts == NightConfig().restarts
