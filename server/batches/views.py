"""The rig face of the API (DESIGN.md section 5): next batch, manifest, bundle, events, completion.

A rig token acts only for its own rig (the rig whose ``rig_id`` is its user's name): it may
pull that rig's ``next`` batch, post presentations for and complete that rig's batches, and
gets 403 for any other rig's. Manifests, bundles and images stay readable by any rig token
(images are content-addressed and shared between rigs). People with viewer or experimenter
roles may read manifests, images and bundles too.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from itloop.errors import InvalidInput
from server.batches import service
from server.batches.bundle import ensure_bundle
from server.batches.initial import initial_batch
from server.batches.schemas import (
    BatchPage,
    BatchRead,
    CompleteResult,
    InitialBatchCreate,
    Manifest,
    PresentationEvent,
    PresentationResult,
)
from server.batches.tables import Batch, BatchState
from server.deps import (
    BatchReader,
    ExperimenterUser,
    Limit,
    Offset,
    RigUser,
    SessionDep,
    SettingsDep,
    ViewerUser,
)
from server.images.views import etag_matches, get_app_store

router = APIRouter(tags=["rig"])

NDJSON = "application/x-ndjson"
TOO_DEEP = "JSON nested too deeply; send a list of flat presentation event objects"
_event = TypeAdapter(PresentationEvent)
STATES = (BatchState.building, BatchState.published, BatchState.failed, BatchState.withdrawn)
STATE_PATTERN = "^(" + "|".join(STATES) + ")$"


def _manifest_response(request: Request, batch: Batch, cache: str) -> Response:
    # Settings straight from the app: hot path, no extra dependency hop to a worker thread.
    base_url = request.app.state.settings.public_base_url
    return _json_with_etag(request, *service.manifest_json(batch=batch, public_base_url=base_url), cache)


def _json_with_etag(request: Request, body: bytes, etag: str, cache: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": cache}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/rigs/{rig_id}/batches/next",
    summary="The rig's newest published batch, until the rig completes it (204 then, or when none)",
    response_model=Manifest,
    responses={204: {"description": "no batch to show"}},
)
def next_batch(
    rig_id: str, request: Request, session: SessionDep, settings: SettingsDep, user: RigUser
) -> Response:
    batch = service.next_for_rig(session=session, rig_id=rig_id, actor=user)
    if batch is None:
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return _manifest_response(request, batch, "no-store")


@router.get("/batches", response_model=BatchPage, summary="List batches (filter by rig and state)")
def list_batches(
    session: SessionDep,
    _: ViewerUser,
    rig: str | None = None,
    state: Annotated[str | None, Query(pattern=STATE_PATTERN)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> BatchPage:
    rows, total = service.list_batches(session=session, rig_id=rig, state=state, limit=limit, offset=offset)
    items = [
        BatchRead(
            batch_id=r["batch"].batch_id,
            rig_id=r["rig_id"],
            day=r["batch"].day,
            state=r["batch"].state,
            notes=r["batch"].notes,
            model_version=r["model_version"],
            n_images=r["n_images"],
            n_sequence=r["n_sequence"],
            created_at=r["batch"].created_at,
            published_at=r["batch"].published_at,
            completed_at=r["batch"].completed_at,
            pulled_at=r["batch"].pulled_at,
        )
        for r in rows
    ]
    return BatchPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/batches/{batch_id}", response_model=Manifest, summary="A published batch's manifest")
async def get_manifest(batch_id: str, request: Request, session: SessionDep, _: BatchReader) -> Response:
    # Hot for rigs: async with one worker-thread hop. Visibility is read on every request (a
    # withdrawn batch disappears at once); the JSON body comes from the per-process cache.
    base_url = request.app.state.settings.public_base_url
    body, etag = await run_in_threadpool(
        service.published_manifest_json, session=session, batch_id=batch_id, public_base_url=base_url
    )
    return _json_with_etag(request, body, etag, "no-cache")


@router.get(
    "/batches/{batch_id}/bundle",
    summary="Zip of manifest.json and images/<sha256>.png",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def get_bundle(
    batch_id: str, request: Request, session: SessionDep, settings: SettingsDep, _: BatchReader
) -> Response:
    manifest = service.get_manifest(
        session=session, batch_id=batch_id, public_base_url=settings.public_base_url
    )
    store = get_app_store(settings)
    key = ensure_bundle(manifest, store)
    etag = f'"{key.rsplit("/", 1)[-1].removesuffix(".zip")}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    path = store.local_path(key)
    if path is not None:
        return FileResponse(path, media_type="application/zip", filename=f"{batch_id}.zip", headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{batch_id}.zip"'
    return Response(store.get(key), media_type="application/zip", headers=headers)


async def read_events(request: Request) -> list[dict[str, Any]]:
    """Parse a JSON list or NDJSON body into validated events; any bad item names its index.

    The body is bounded as it arrives (``server.body_limit``: 413 past ``max_json_bytes``) and
    parsed in the thread pool, so a large post does not stall the event loop (the rig's GETs).
    """
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return await run_in_threadpool(parse_events, body, content_type)


def parse_events(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The events of a JSON list or NDJSON body, validated; blocking (see :func:`read_events`)."""
    raw: list[Any] = []
    if content_type in (NDJSON, "application/jsonl", "application/ndjson"):
        for n, line in enumerate(body.decode("utf-8", errors="replace").splitlines()):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"line {n + 1}: not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise InvalidInput(f"line {n + 1}: {TOO_DEEP}") from None
    else:
        try:
            parsed = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"body is not valid JSON ({exc}); send a JSON list or NDJSON") from None
        except RecursionError:
            # json.loads recurses once per nesting level: a body of 100,000 '[' ends here.
            raise InvalidInput(f"body: {TOO_DEEP}") from None
        if not isinstance(parsed, list):
            raise InvalidInput("body must be a JSON list of presentation events (or NDJSON)")
        raw = parsed
    events = []
    problems = []
    for i, item in enumerate(raw):
        try:
            events.append(_event.validate_python(item).model_dump())
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"item {i}: {loc + ': ' if loc else ''}{err.get('msg', 'invalid')}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidInput("; ".join(problems[:5]) + more, errors=problems[:100])
    return events


_events_body = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": PresentationEvent.model_json_schema()}},
            NDJSON: {
                "schema": {"type": "string", "description": "one PresentationEvent JSON object per line"}
            },
        },
    }
}


@router.post(
    "/batches/{batch_id}/presentations",
    response_model=PresentationResult,
    summary="Post presentation events (idempotent by event_id)",
    openapi_extra=_events_body,
)
def post_presentations(
    batch_id: str,
    user: RigUser,
    events: Annotated[list[dict[str, Any]], Depends(read_events)],
    session: SessionDep,
) -> PresentationResult:
    counts = service.record_presentations(session=session, batch_id=batch_id, events=events, actor=user)
    # Commit before answering: a rig that got the counts must never need to re-post.
    session.commit()
    return PresentationResult(**counts)


@router.post(
    "/batches/{batch_id}/complete", response_model=CompleteResult, summary="The rig finished the batch"
)
def complete_batch(batch_id: str, session: SessionDep, user: RigUser) -> CompleteResult:
    batch = service.complete(session=session, batch_id=batch_id, actor=user)
    assert batch.completed_at is not None
    out = CompleteResult(
        batch_id=batch.batch_id,
        completed_at=batch.completed_at,
        events=service.count_events(session=session, batch=batch),
    )
    session.commit()
    return out


@router.post(
    "/rigs/{rig_id}/batches/initial",
    response_model=Manifest,
    status_code=201,
    summary="Publish the day-0 batch: the clean and reference sets, no perturbations (experimenter)",
)
def create_initial_batch(
    rig_id: str, body: InitialBatchCreate, session: SessionDep, settings: SettingsDep, _: ExperimenterUser
) -> Response:
    batch = initial_batch(
        session,
        get_app_store(settings),
        rig_id=rig_id,
        batch_id=body.batch_id or f"{rig_id}-day0",
        repeats=body.repeats,
        seed=body.seed,
        on_ms=body.on_ms,
        off_ms=body.off_ms,
        images_per_trial=body.images_per_trial,
        clean_images=body.clean_images,
    )
    session.commit()
    body_bytes, etag = service.manifest_json(batch=batch, public_base_url=settings.public_base_url)
    return Response(body_bytes, status_code=201, media_type="application/json", headers={"ETag": etag})
