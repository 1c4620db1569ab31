"""Analysis results: replace-on-store, query filters, pagination and population curves."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from server.analysis import service
from server.analysis.tables import AnalysisResult
from server.modeling import service as modeling
from tests.server.test_recordings_helpers import create_session, make_lab


def _records(sites: list[str], source: str, day: int, scale: float = 1.0) -> list[dict]:
    out = []
    for eps in (1.0, 3.0, 10.0):
        for est in ("plain", "sign_corrected"):
            out.append(
                {
                    "site_id": None,
                    "epsilon": eps,
                    "estimator": est,
                    "value": scale * eps / 10,
                    "ci_low": scale * eps / 20,
                    "ci_high": scale * eps / 5,
                    "n_pairs": 40,
                    "n_sites": len(sites),
                    "undefined_reason": None,
                    "source": source,
                    "day": day,
                }
            )
            for s in sites:
                out.append(
                    {
                        "site_id": s,
                        "epsilon": eps,
                        "estimator": est,
                        "value": scale * eps / 9,
                        "ci_low": None,
                        "ci_high": None,
                        "n_pairs": 20,
                        "n_sites": 1,
                        "undefined_reason": None,
                        "source": source,
                        "day": day,
                    }
                )
    return out


def test_store_replace_query_and_summary(client, auth, db_session: Session) -> None:
    lab = make_lab(db_session, n_sites=3)
    create_session(client, auth, lab)
    from server.recordings.service import get_session

    rec = get_session(session=db_session, session_id=lab.sid)
    mv = modeling.record_model_version(
        session=db_session,
        version=f"{lab.subject}-v",
        candidate="c",
        backbone="b",
        checkpoint_sha256=None,
        layer="l",
        pool="avg",
        artifact_key="k",
        trained_on={},
        metrics={},
        score=None,
        site_metrics=[],
    )
    day = 700 + rec.id
    n = service.store_results(
        session=db_session, records=_records(lab.site_ids, "it", day), session_pk=rec.id, day=day
    )
    assert n == 3 * 2 * 4
    service.store_results(
        session=db_session,
        records=_records(lab.site_ids, f"model:{mv.version}", day, 10),
        session_pk=rec.id,
        day=day,
    )
    # storing again replaces that source only
    again = _records(lab.site_ids, "it", day, 2)
    again[0]["value"] = float("nan")
    service.store_results(session=db_session, records=again, session_pk=rec.id, day=day)
    db_session.commit()
    assert db_session.query(AnalysisResult).filter_by(session_pk=rec.id).count() == 48
    h = auth("viewer")
    page = client.get(
        "/api/v1/analysis/sensitivity", params={"day": day, "source": "it", "limit": 5}, headers=h
    )
    body = page.json()
    assert body["total"] == 24 and len(body["items"]) == 5
    assert body["items"][0]["site_id"] is None and body["items"][0]["value"] is None
    assert body["items"][0]["undefined_reason"] == "non-finite"
    one = client.get(
        "/api/v1/analysis/sensitivity",
        params={"site_id": lab.site_ids[1], "epsilon": 3, "estimator": "plain", "day": day},
        headers=h,
    ).json()
    assert one["total"] == 2 and {i["source"] for i in one["items"]} == {"it", f"model:{mv.version}"}
    by_model = client.get(
        "/api/v1/analysis/sensitivity", params={"model_version": mv.version}, headers=h
    ).json()
    assert by_model["total"] == 24 and all(i["model_version"] == mv.version for i in by_model["items"])
    pop = client.get(
        "/api/v1/analysis/sensitivity",
        params={"population": True, "day": day, "session_id": lab.sid},
        headers=h,
    ).json()
    assert pop["total"] == 12 and all(i["site_id"] is None for i in pop["items"])
    summary = client.get("/api/v1/analysis/sensitivity/summary", params={"day": day}, headers=h).json()
    curves = {(c["source"], c["estimator"]): c for c in summary["curves"]}
    assert set(curves) == {(s, e) for s in ("it", f"model:{mv.version}") for e in ("plain", "sign_corrected")}
    sc = curves[("it", "sign_corrected")]
    assert [p["epsilon"] for p in sc["points"]] == [1.0, 3.0, 10.0]
    assert [p["value"] for p in sc["points"]] == pytest.approx([0.2, 0.6, 2.0])
    assert curves[(f"model:{mv.version}", "plain")]["model_version"] == mv.version


@pytest.mark.parametrize("path", ["/api/v1/analysis/sensitivity", "/api/v1/analysis/sensitivity/summary"])
def test_auth(client, auth, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=auth("rig")).status_code == 403
    assert client.get(path, headers=auth("viewer")).status_code == 200


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"estimator": "sign-corrected"}, "unknown estimator 'sign-corrected'; valid: plain, sign_corrected"),
        ({"estimator": "model_free"}, "model_free_sign_corrected"),
        ({"source": "IT"}, "unknown source 'IT'; valid: 'it'"),
        ({"source": "model:"}, "model:<version>"),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/analysis/sensitivity", "/api/v1/analysis/sensitivity/summary"])
def test_a_misspelt_filter_is_422_naming_the_valid_names(client, auth, path: str, params, says: str) -> None:
    """An empty list would read as "no results yet"; a 422 says what the valid names are."""
    r = client.get(path, params=params, headers=auth("viewer"))
    assert r.status_code == 422 and says in r.json()["detail"], r.text
    for source in ("it", "it_to_date", "model:night1-pixels16"):
        ok = client.get(
            path, params={"estimator": "model_free_plain", "source": source}, headers=auth("viewer")
        )
        assert ok.status_code == 200, (source, ok.text)
