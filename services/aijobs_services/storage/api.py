"""Storage's HTTP API: the routes, their callers and what each answers; the use cases are in
:mod:`aijobs_services.storage.objects`, the bodies in :mod:`aijobs.api.storage`."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from starlette.convertors import PathConvertor, register_url_convertor

from aijobs.api.imagelist import LIST_TYPE
from aijobs.api.rules import ACCOUNT_NAME
from aijobs.api.storage import (
    KEY,
    MANIFEST_TYPE,
    SHA256,
    CommitRequest,
    DeletedObjects,
    DownloadLink,
    DownloadLinkRequest,
    IngestRequest,
    JobObjects,
    ObjectKind,
    ObjectPage,
    StoredObject,
)
from aijobs_services.kit.app import IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import aware, is_postgres, utcnow
from aijobs_services.kit.fields import MAX_ROW_ID, NO_NUL, PathText, Timestamp
from aijobs_services.kit.idempotency import IdempotentRequestDep
from aijobs_services.kit.outbound import BadUrl, DestinationRefused
from aijobs_services.kit.problems import Forbidden, Problem, Unprocessable, documented
from aijobs_services.storage import ingest, objects
from aijobs_services.storage.blobs import BlobStore, DiskFull, ObjectTooLarge
from aijobs_services.storage.images import ImageTooLarge, UnsupportedImage
from aijobs_services.storage.manifests import UnsupportedManifest
from aijobs_services.storage.models import StoredObject as StoredRow
from aijobs_services.storage.objects import (
    DigestMismatch,
    KeyTaken,
    ObjectDeleted,
    ObjectGone,
    ObjectTaken,
    UnknownObject,
)
from aijobs_services.storage.settings import StorageSettings


class KeyConvertor(PathConvertor):
    """A key in a URL: any path (it may hold slashes) but one ending in what another route of an
    object does (``/content``, ``/commit``...), so ``PUT /v1/objects/o1/commit`` is a method that
    route does not serve (405), not a key. The key's own pattern is checked after (a 422)."""

    regex = r"(?!.*/(?:content|commit|delete|download-url)$).+"


register_url_convertor("storage_key", KeyConvertor())

Writer = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]
Discarder = Annotated[Caller, Depends(allow("main-api", "operator", "admin"))]


class NotConfigured(Problem):
    status, slug, title = 503, "not-configured", "This service is missing a setting"


class BadSignature(Forbidden):
    slug, title = "bad-signature", "Invalid link"


class LinkExpired(Forbidden):
    slug, title = "link-expired", "Link expired"


# What storing bytes may answer, whether they were uploaded or fetched.
STORING = (KeyTaken, ObjectTooLarge, ImageTooLarge, UnsupportedImage, DiskFull, DigestMismatch)
EXISTING: dict[int | str, dict[str, Any]] = {
    200: {"model": StoredObject, "description": "The key already held these bytes: its object"}
}
IMAGES = ("image/png", "image/jpeg", "image/webp")
# What an object may be stored as and is served as: an image, a batch's manifest (JSON lines), or
# an image list (text).
CONTENT_TYPES = (*IMAGES, MANIFEST_TYPE, LIST_TYPE)
BINARY = {"schema": {"type": "string", "format": "binary"}}
AN_OBJECT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The object's bytes, as the type it was sniffed to be (a manifest: JSON lines)",
        "content": dict.fromkeys(CONTENT_TYPES, BINARY),
    }
}


def public(obj: StoredRow) -> StoredObject:
    """An object as callers see it (its times of commit and deletion stay inside); a time read
    back from SQLite has lost its zone, which is UTC."""
    answer = StoredObject.model_validate(obj, from_attributes=True)
    return answer.model_copy(update={"created_at": aware(obj.created_at)})


def _settings(request: Request) -> StorageSettings:
    settings: StorageSettings = request.app.state.settings
    return settings


def _blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


class BlobResponse(FileResponse):
    """A stored blob, sent in 1 MiB pieces: Starlette's 64 KiB default costs a thread hop and an
    event-loop turn per piece (bench/storage.py: GET 284 -> ~405 MB/s on 3 MB objects)."""

    chunk_size = 1024 * 1024


def reading(engine: Engine) -> Connection:
    """A connection for one read: on PostgreSQL in autocommit, so a lone ``SELECT`` is one round
    trip, with no ``BEGIN`` and ``COMMIT`` around it (the pool puts the connection back as it
    was). SQLite's connections are the kit's own (it begins their transactions itself): as they
    are."""
    conn = engine.connect()
    if is_postgres(engine):
        conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def _serve(request: Request, object_id: str) -> Response:
    """An object's bytes, on the endpoint's thread: its row in one read, then a blob no larger
    than one of :class:`BlobResponse`'s pieces read whole here (the same memory a
    :class:`BlobResponse` would hold), rather than by a :class:`BlobResponse`'s thread hops to
    stat, open, read and close it (a batch reads one small image per task); a larger blob is
    streamed."""
    with reading(request.app.state.engine) as conn:
        content = objects.readable(conn, object_id)
    path, headers = _blobs(request).path(content.sha256), _download_headers(object_id, content.content_type)
    if content.size > BlobResponse.chunk_size:
        return BlobResponse(path, media_type=content.content_type, headers=headers)
    return Response(path.read_bytes(), media_type=content.content_type, headers=headers)


async def _put(request: Request, chunks: AsyncIterator[bytes], **fields: Any) -> Response:
    settings, blobs = _settings(request), _blobs(request)
    text = fields.get("kind") in ("manifest", "list")
    limit = settings.max_manifest_bytes if text else settings.max_object_bytes
    staged = await blobs.receive(chunks, limit)
    created, obj = await run_in_threadpool(
        objects.store_staged, request.app.state.sessions, blobs, settings, staged, **fields
    )
    return _answer(public(obj), 201 if created else 200)


def _listed(rows: list[dict[str, Any]]) -> list[StoredObject]:
    """Listed rows as callers see them (a time read back from SQLite has lost its zone: UTC)."""
    return [StoredObject.model_validate({**row, "created_at": aware(row["created_at"])}) for row in rows]


def _listing(page: JobObjects | ObjectPage) -> Response:
    """A page of objects as JSON, serialised by pydantic straight to bytes (the route's model
    documents it; returning the model would have FastAPI validate every item again)."""
    return Response(page.model_dump_json(by_alias=True), media_type="application/json")


def _answer(obj: StoredObject, status: int) -> Response:
    """An object as JSON, serialised by pydantic straight to bytes."""
    return Response(obj.model_dump_json(by_alias=True), status, media_type="application/json")


router = APIRouter(prefix="/v1", tags=["storage"])


# PUT /v1/objects/<key> and GET /v1/objects/<id> share one URL template: a URL that both match
# is one resource in the OpenAPI, as it is in the Allow header of a method neither serves.
@router.put(
    "/objects/{object_id:storage_key}",
    status_code=201,
    summary="Store an image, a batch's manifest or an image list under a key (idempotent by key)",
    response_model=StoredObject,
    responses={**EXISTING, **documented(*STORING, UnsupportedManifest)},
    openapi_extra={"requestBody": {"required": True, "content": dict.fromkeys(CONTENT_TYPES, BINARY)}},
)
async def put_object(
    request: Request,
    key: Annotated[
        str, Path(alias="object_id", pattern=KEY, description="The key to store under, the caller's name")
    ],
    caller: Writer,
    account: Annotated[str, Query(min_length=2, max_length=63, pattern=ACCOUNT_NAME)],
    job_id: Annotated[str | None, Query(alias="jobId", max_length=128)] = None,
    kind: Annotated[
        ObjectKind,
        Query(
            description="manifest: a batch's results as JSON lines (operator, admin only); "
            "list: a batch's images named one per line (not a worker)"
        ),
    ] = "input",
    state: Annotated[Literal["staging", "committed"], Query()] = "staging",
    sha256: Annotated[
        str | None,
        Query(
            pattern=SHA256,
            description="The bytes' digest, as the sender computed it: bytes that hash otherwise are "
            "refused (422 digest-mismatch); a result so vouched for has its header checked, not its "
            "pixels decoded",
        ),
    ] = None,
) -> Response:
    """The same key with the same bytes returns the first object (200); with other bytes, 409.
    An image is sniffed from its bytes; a manifest must be UTF-8 text and is stored as
    ``application/x-ndjson`` with no pixels, an image list as ``text/plain``."""
    # A manifest is what a user's signed link to a batch's results serves: only the operator
    # (or an admin) writes one, never a worker or Main API on a user's behalf. A list is what a
    # user names a batch's images with: Main API stores it for them; a worker never does.
    if kind == "manifest" and caller.name not in ("operator", "admin"):
        raise Forbidden(f"{caller.name} may not store a manifest; only the operator does")
    if kind == "list" and caller.name == "worker":
        raise Forbidden("a worker may not store an image list")
    return await _put(
        request,
        request.stream(),
        key=key,
        account=account,
        job_id=job_id,
        kind=kind,
        state=state,
        sha256=sha256,
        from_worker=caller.name == "worker",
    )


@router.post(
    "/ingest",
    summary="Fetch an image from an http(s) URL and store it (SSRF-safe)",
    status_code=201,
    response_model=StoredObject,
    responses={
        **EXISTING,
        **documented(*STORING, DestinationRefused, BadUrl, ingest.FetchRefused, ingest.FetchFailed),
    },
)
async def ingest_url(request: Request, body: IngestRequest, _: Operator) -> Response:
    existing = await run_in_threadpool(objects.find, request.app.state.sessions, body.key)
    if existing is not None:
        return _answer(public(existing), 200)
    settings = _settings(request)
    destination = await ingest.check_url(body.url, settings.ingest_allow_cidrs)
    chunks = ingest.fetch(destination, settings.ingest_timeout_seconds)
    return await _put(
        request,
        chunks,
        key=body.key,
        account=body.account,
        job_id=body.job_id,
        kind=body.kind,
        state=body.state,
    )


@router.get(
    "/objects/{object_id}",
    summary="An object's metadata",
    response_model=StoredObject,
    responses=documented(UnknownObject),
)
def get_object(object_id: PathText, _: Reader, session: SessionDep) -> StoredObject:
    with session.begin():
        return public(objects.get(session, object_id))


@router.get(
    "/by-key/{key:path}",
    summary="The object stored under a key",
    response_model=StoredObject,
    responses=documented(UnknownObject),
)
def get_by_key(key: PathText, _: Reader, session: SessionDep) -> StoredObject:
    with session.begin():
        obj = objects.by_key(session, key)
        if obj is None:
            raise UnknownObject(f"no object under key {key!r}")
        return public(obj)


@router.get(
    "/objects/{object_id}/content",
    summary="An object's bytes",
    response_class=BlobResponse,
    responses={**AN_OBJECT, **documented(UnknownObject, ObjectGone)},
)
def get_content(object_id: PathText, _: Reader, request: Request) -> Response:
    return _serve(request, object_id)


@router.post(
    "/objects/{object_id}/commit",
    summary="Attach a staged upload to its job (idempotent)",
    response_model=StoredObject,
    responses=documented(UnknownObject, ObjectDeleted, ObjectTaken),
)
def commit_object(
    object_id: PathText,
    body: CommitRequest,
    _: Operator,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, public(objects.commit(s, object_id, body.job_id))))


@router.post(
    "/objects/{object_id}/delete",
    summary="Delete an object (idempotent)",
    response_model=StoredObject,
    responses=documented(UnknownObject, (403, "forbidden", "Main API may only discard a staging upload")),
)
def delete_object(
    object_id: PathText,
    caller: Discarder,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, StoredObject]:
        obj = objects.get(s, object_id)
        # Main API may only take back an upload whose job it failed to create (still staging).
        if caller.name == "main-api" and obj.state != "staging":
            raise Forbidden(f"object {object_id} is {obj.state}; only a staging upload can be discarded")
        return 200, public(objects.delete(s, obj))

    return store.run(session, idem, act)


@router.post(
    "/jobs/{job_id}/objects/delete",
    summary="Delete every object of a job (compensation)",
    response_model=DeletedObjects,
)
def delete_job_objects(
    job_id: PathText, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, DeletedObjects]:
        deleted = [objects.delete(s, obj).id for obj in objects.for_job(s, job_id)]
        return 200, DeletedObjects(job_id=job_id, deleted=deleted)

    return store.run(session, idem, act)


@router.get(
    "/jobs/{job_id}/objects",
    summary="A job's objects, deleted ones included (for the auditor); paged with a limit",
    response_model=JobObjects,
)
def list_job_objects(
    job_id: PathText,
    _: Reader,
    session: SessionDep,
    after: Annotated[
        str | None,
        Query(max_length=40, pattern=NO_NUL, description="Only objects with ids past this (a page's next)"),
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="At most this many, in id order; absent: every one")
    ] = None,
) -> Response:
    with session.begin():
        found = objects.public_rows(session, objects.job_query(job_id, after=after, limit=limit))
    full = limit is not None and len(found) == limit
    page = JobObjects(job_id=job_id, items=_listed(found), next=found[-1]["id"] if full else None)
    return _listing(page)


@router.get(
    "/objects",
    summary="An account's committed inputs under a key prefix, in key order (paginated)",
    response_model=ObjectPage,
)
def list_objects(
    _: Reader,
    session: SessionDep,
    account: Annotated[str, Query(min_length=2, max_length=63, pattern=ACCOUNT_NAME)],
    prefix: Annotated[
        str, Query(pattern=KEY, description="Keys starting with these characters (no wildcards)")
    ],
    created_before: Annotated[
        Timestamp | None,
        Query(alias="createdBefore", description="Only objects created at or before this instant"),
    ] = None,
    after: Annotated[
        str | None, Query(pattern=KEY, description="Only keys past this one (a page's next)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> Response:
    """A batch job's inputs: the job's creation time as ``createdBefore`` keeps the set the same
    however often it is listed, even if the user uploads more under the prefix later."""
    dialect = session.get_bind().dialect.name
    stmt = objects.inputs_query(
        dialect, account, prefix, created_before=created_before, after=after, limit=limit
    )
    with session.begin():
        found = objects.public_rows(session, stmt)
    return _listing(ObjectPage(items=_listed(found), next=found[-1]["key"] if len(found) == limit else None))


_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    MANIFEST_TYPE: "jsonl",
    LIST_TYPE: "txt",
}


def _download_headers(object_id: str, content_type: str) -> dict[str, str]:
    """Served as what it was sniffed to be, and nothing else: no content sniffing, a download
    rather than a page, no scripts even if a polyglot file is opened directly."""
    ext = _EXTENSIONS.get(content_type, "bin")
    return {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="{object_id}.{ext}"',
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def _signature(key: bytes, object_id: str, expires: int) -> str:
    return hmac.new(key, f"{object_id}:{expires}".encode(), hashlib.sha256).hexdigest()


@router.post(
    "/objects/{object_id}/download-url",
    summary="A signed, expiring link to an object",
    response_model=DownloadLink,
    responses=documented(
        UnknownObject,
        ObjectGone,
        (422, "bad-expiry", "expiresAt is past or over 30 days ahead"),
        NotConfigured,
    ),
)
def download_url(
    object_id: PathText, body: DownloadLinkRequest, _: Reader, request: Request, session: SessionDep
) -> DownloadLink:
    with session.begin():
        objects.live(session, object_id)
    now = utcnow()
    if body.expires_at is not None:
        expires = int(body.expires_at.timestamp())
        if not now.timestamp() < expires <= now.timestamp() + 30 * 24 * 3600:
            raise Unprocessable("expiresAt must be in the future and within 30 days", slug="bad-expiry")
    else:
        expires = int(now.timestamp()) + body.ttl_seconds
    base = _settings(request).public_url.rstrip("/")
    if not base:  # never from the request's Host header: a caller could point links anywhere
        raise NotConfigured(
            "Storage has no public URL to sign download links with: set AIJOBS_PUBLIC_URL "
            "(the chart's services.storage.publicUrl)"
        )
    sig = _signature(request.app.state.url_key, object_id, expires)
    return DownloadLink(
        url=f"{base}/v1/download/{object_id}?expires={expires}&signature={sig}",
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )


@router.get(
    "/download/{object_id}",
    summary="Download through a signed link (no token needed)",
    response_class=BlobResponse,
    responses={
        **AN_OBJECT,
        **documented(BadSignature, LinkExpired, UnknownObject, ObjectGone),
    },
)
def download(
    object_id: PathText,
    expires: Annotated[int, Query(ge=0, le=MAX_ROW_ID)],
    signature: Annotated[str, Query(max_length=128)],
    request: Request,
) -> Response:
    expected = _signature(request.app.state.url_key, object_id, expires)
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise BadSignature("the link's signature is not valid")
    if expires < utcnow().timestamp():
        raise LinkExpired("the link has expired; ask for a new one")
    return _serve(request, object_id)
