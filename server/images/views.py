"""Image routes: the rig's immutable PNG fetch, lineage, clean image-set upload and withdrawal.

Image-set uploads follow the lab's size policy (``service.check_size``): every image of the
lab has one pixel size, fixed by the oldest set not withdrawn; anything else is a 422 naming
the expected size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from itloop.errors import NotFound
from itloop.storage import ObjectStore, get_store, image_key
from server.body_limit import accepts_upload
from server.deps import BatchReader, ExperimenterUser, Limit, Offset, SessionDep, SettingsDep, ViewerUser
from server.images import service
from server.images.known import KnownImages
from server.images.schemas import (
    ImageLineage,
    ImageRead,
    ImageSetDetail,
    ImageSetPage,
    ImageSetRead,
    ImageSetWithdraw,
)
from server.images.tables import ImageSet

router = APIRouter(tags=["images"])

# private: the bytes are only served to a valid token, so a shared cache (a proxy) must not keep
# them for others; the client's own cache may keep them for ever (content-addressed).
IMMUTABLE = "private, max-age=31536000, immutable"
STREAM_ABOVE_BYTES = 4 * 1024 * 1024


def get_app_store(settings: SettingsDep) -> ObjectStore:
    """The object store of the app's settings (cached per URL)."""
    return get_store(settings.resolved_store_url)


def etag_matches(request: Request, etag: str) -> bool:
    """Does ``If-None-Match`` name this entity tag (weak or strong, or ``*``)?"""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    for part in header.split(","):
        tag = part.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


@router.get(
    "/images/{sha256}",
    summary="PNG bytes of an image (immutable; ETag is the SHA-256)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the PNG whose SHA-256 is the path"},
        304: {"description": "If-None-Match named this image"},
        404: {"description": "unknown hash"},
        422: {"description": "malformed hash"},
    },
)
async def get_image(sha256: str, request: Request, session: SessionDep, _: BatchReader) -> Response:
    # The rig's hottest route, so async: a known hash (images are never deleted) with a cached
    # token is answered with one worker-thread hop for the file read and no database I/O.
    sha = service.check_sha256(sha256)
    state = request.app.state
    known: KnownImages = state.known_images
    if sha not in known:
        if not await run_in_threadpool(service.is_registered, session=session, sha256=sha):
            raise NotFound(f"no image with sha256 {sha}")
        known.add(sha)
    etag = f'"{sha}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    store = get_app_store(state.settings)
    body = await run_in_threadpool(_read_image, store, sha)
    if isinstance(body, Path):
        return FileResponse(body, media_type="image/png", headers=headers)
    return Response(body, media_type="image/png", headers=headers)


def _read_image(store: ObjectStore, sha: str) -> bytes | Path:
    """The PNG's bytes, or its path when it is big enough to be worth streaming."""
    key = image_key(sha)
    path = store.local_path(key)
    try:
        if path is not None:
            # One read, no store abstraction: small files (every stimulus PNG) go out in one
            # body, which measured ~25% less server CPU than FileResponse's chunked hops.
            if path.stat().st_size > STREAM_ABOVE_BYTES:
                return path
            return path.read_bytes()
        return store.get(key)
    except (FileNotFoundError, KeyError):
        raise NotFound(f"image {sha} is registered but its object is missing from the store") from None


@router.get("/images/{sha256}/lineage", response_model=ImageLineage, summary="How an image was made")
def get_lineage(sha256: str, session: SessionDep, _: ViewerUser) -> ImageLineage:
    image = service.get_by_hash(session=session, sha256=sha256)
    return ImageLineage(**service.lineage(session=session, image=image))


@router.post(
    "/image-sets",
    response_model=ImageSetDetail,
    status_code=201,
    summary="Upload a clean image set (multipart PNG files)",
)
@accepts_upload
async def create_image_set(
    session: SessionDep,
    settings: SettingsDep,
    _: ExperimenterUser,
    name: Annotated[str, Form(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")],
    files: Annotated[
        list[UploadFile], File(description="PNG files; `<category>__<name>.png` names a category")
    ],
    description: Annotated[str, Form()] = "",
    is_reference: Annotated[bool, Form(description="the fixed reference set shown every day")] = False,
    categories: Annotated[str | None, Form(description="JSON list, one category (or null) per file")] = None,
) -> ImageSetDetail:
    # The body was bounded as it arrived (server.body_limit: 413 past max_upload_bytes, before
    # the multipart parser spooled it), so the files together are within the limit.
    payload: list[tuple[str, bytes]] = []
    for f in files:
        payload.append((f.filename or f"file{len(payload)}", await f.read()))
    cats = service.parse_categories(categories, len(payload))
    store = get_app_store(settings)

    def _create() -> ImageSetDetail:
        image_set = service.create_image_set(
            session=session,
            store=store,
            name=name,
            files=payload,
            categories=cats,
            description=description,
            is_reference=is_reference,
        )
        out = _detail(session, image_set)
        session.commit()
        return out

    return await run_in_threadpool(_create)


def _detail(session: Session, image_set: ImageSet) -> ImageSetDetail:
    members = service.set_members(session=session, image_set=image_set)
    return ImageSetDetail(
        id=image_set.id,
        name=image_set.name,
        description=image_set.description,
        is_reference=image_set.is_reference,
        n_images=len(members),
        created_at=image_set.created_at,
        withdrawn_at=image_set.withdrawn_at,
        withdrawn_reason=image_set.withdrawn_reason,
        images=[ImageRead.model_validate(m) for m in members],
    )


@router.get("/image-sets", response_model=ImageSetPage, summary="List clean image sets")
def list_image_sets(
    session: SessionDep,
    _: ViewerUser,
    is_reference: bool | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> ImageSetPage:
    rows, total = service.list_image_sets(
        session=session, is_reference=is_reference, limit=limit, offset=offset
    )
    items = [
        ImageSetRead(
            id=s.id,
            name=s.name,
            description=s.description,
            is_reference=s.is_reference,
            n_images=n,
            created_at=s.created_at,
            withdrawn_at=s.withdrawn_at,
            withdrawn_reason=s.withdrawn_reason,
        )
        for s, n in rows
    ]
    return ImageSetPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/image-sets/{name}", response_model=ImageSetDetail, summary="One image set with its images")
def get_image_set(name: str, session: SessionDep, _: ViewerUser) -> ImageSetDetail:
    return _detail(session, service.get_image_set(session=session, name=name))


@router.post(
    "/image-sets/{name}/withdraw",
    response_model=ImageSetDetail,
    summary="Withdraw an image set: later nights and day-0 batches no longer use it (experimenter)",
)
def withdraw_image_set(
    name: str, session: SessionDep, _: ExperimenterUser, body: ImageSetWithdraw | None = None
) -> ImageSetDetail:
    image_set = service.withdraw_image_set(session=session, name=name, reason=body.reason if body else "")
    out = _detail(session, image_set)
    session.commit()
    return out
