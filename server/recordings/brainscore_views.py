"""The StimulusSet export of a session (brainio packaging: CSV + zip), beside the assembly in views.py.

Kept apart from :mod:`server.recordings.views` so the upload routes there and these exports
change independently.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter
from fastapi import Response as HTTPResponse

from server.deps import SessionDep, SettingsDep, ViewerUser
from server.images.views import get_app_store
from server.recordings import service, stimulus_set

router = APIRouter(prefix="/sessions", tags=["recordings"])


def _file(data: bytes, media_type: str, filename: str) -> HTTPResponse:
    """The payload with its SHA-1, which a brainio catalog lists for every CSV and zip."""
    return HTTPResponse(
        data,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-SHA1": hashlib.sha1(data).hexdigest(),  # noqa: S324 - brainio's catalog hash
        },
    )


@router.get(
    "/{session_id}/stimulus_set.csv",
    summary="The session's StimulusSet (brainio CSV: stimulus_id, filename, sha256, lineage)",
    response_class=HTTPResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def stimulus_set_csv(session_id: str, session: SessionDep, _: ViewerUser) -> HTTPResponse:
    rec = service.get_session(session=session, session_id=session_id)
    data = stimulus_set.stimulus_csv(session=session, recording=rec)
    return _file(data, "text/csv", f"{session_id}-stimulus_set.csv")


@router.get(
    "/{session_id}/stimulus_set.zip",
    summary="The images of the session's StimulusSet (zip of <sha256>.png, as served)",
    response_class=HTTPResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def stimulus_set_zip(
    session_id: str, session: SessionDep, settings: SettingsDep, _: ViewerUser
) -> HTTPResponse:
    rec = service.get_session(session=session, session_id=session_id)
    data = stimulus_set.stimulus_zip(session=session, recording=rec, store=get_app_store(settings))
    return _file(data, "application/zip", f"{session_id}-stimulus_set.zip")
