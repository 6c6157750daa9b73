"""Storage's HTTP API."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import Field, StrictInt
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aijobs.api.rules import ACCOUNT_NAME, HTTP_URL
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import aware, utcnow
from aijobs_services.kit.fields import MAX_ROW_ID, Timestamp
from aijobs_services.kit.idempotency import IdempotentRequestDep
from aijobs_services.kit.problems import Forbidden, NotFound, Problem, Unprocessable
from aijobs_services.storage import ingest, objects
from aijobs_services.storage.blobs import BlobStore, Staged
from aijobs_services.storage.images import inspect_image
from aijobs_services.storage.models import StoredObject
from aijobs_services.storage.settings import StorageSettings

NAME = ACCOUNT_NAME
KEY = r"^[A-Za-z0-9._:/-]{1,255}$"
Writer = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]


class IngestBody(CamelModel):
    key: str = Field(pattern=KEY)
    url: str = Field(max_length=2048, pattern=HTTP_URL)
    account: str = Field(min_length=2, max_length=63, pattern=NAME)
    job_id: str | None = Field(default=None, max_length=128)
    kind: Literal["input", "result"] = "input"
    state: Literal["staging", "committed"] = "staging"


class CommitBody(CamelModel):
    job_id: str = Field(min_length=1, max_length=128)


class DownloadUrlBody(CamelModel):
    ttl_seconds: StrictInt = Field(default=7 * 24 * 3600, ge=60, le=30 * 24 * 3600)
    expires_at: Timestamp | None = Field(
        default=None, description="An exact expiry instead of a TTL: the same expiry gives the same link"
    )


def public(obj: StoredObject) -> dict[str, Any]:
    return {
        "id": obj.id,
        "key": obj.key,
        "account": obj.account,
        "jobId": obj.job_id,
        "kind": obj.kind,
        "sha256": obj.sha256,
        "size": obj.size,
        "contentType": obj.content_type,
        "width": obj.width,
        "height": obj.height,
        "state": obj.state,
        "createdAt": aware(obj.created_at).isoformat(),
    }


def _settings(request: Request) -> StorageSettings:
    settings: StorageSettings = request.app.state.settings
    return settings


class BlobResponse(FileResponse):
    """A stored blob, sent in 1 MiB pieces: Starlette's 64 KiB default costs a thread hop and an
    event-loop turn per piece (bench/storage.py: GET 284 -> ~405 MB/s on 3 MB objects)."""

    chunk_size = 1024 * 1024


def _blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


def _store_staged(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    staged: Staged,
    *,
    key: str,
    account: str,
    job_id: str | None,
    kind: str,
    state: str,
) -> tuple[int, dict[str, Any]]:
    """Check, keep and record a received file; idempotent by ``key``. Runs on a thread."""
    try:
        with sessions() as session:
            existing = objects.by_key(session, key)
            if existing is not None:
                return 200, public(objects.same_or_conflict(existing, staged.sha256))
        info = inspect_image(staged.path, max_pixels=settings.max_pixels, max_side=settings.max_side)
        with blobs.sharing(), sessions() as session, session.begin():
            objects.check_capacity(
                session, account, staged.size, settings.capacity_bytes, settings.account_quota_bytes
            )
            blobs.keep(staged)  # durable under its content name before any record points at it
            try:
                with session.begin_nested():
                    obj = objects.record(
                        session,
                        key=key,
                        account=account,
                        job_id=job_id,
                        kind=kind,
                        state=state,
                        staged=staged,
                        info=info,
                    )
                    return 201, public(obj)
            except IntegrityError:
                pass  # a concurrent put of the same key won the race: compare with it below
        with sessions() as session:
            raced = objects.by_key(session, key)
            assert raced is not None
            return 200, public(objects.same_or_conflict(raced, staged.sha256))
    finally:
        blobs.discard(staged)


async def _put(request: Request, chunks: AsyncIterator[bytes], **fields: Any) -> JSONResponse:
    settings, blobs = _settings(request), _blobs(request)
    staged = await blobs.receive(chunks, settings.max_object_bytes)
    status, body = await run_in_threadpool(
        _store_staged, request.app.state.sessions, blobs, settings, staged, **fields
    )
    return JSONResponse(body, status)


router = APIRouter(prefix="/v1", tags=["storage"])


@router.put("/objects/{key:path}", status_code=201, summary="Store an image under a key (idempotent by key)")
async def put_object(
    request: Request,
    key: str,
    _: Writer,
    account: Annotated[str, Query(min_length=2, max_length=63, pattern=NAME)],
    job_id: Annotated[str | None, Query(alias="jobId", max_length=128)] = None,
    kind: Annotated[Literal["input", "result"], Query()] = "input",
    state: Annotated[Literal["staging", "committed"], Query()] = "staging",
) -> JSONResponse:
    """The same key with the same bytes returns the first object (200); with other bytes, 409."""
    if not re.fullmatch(KEY, key):
        raise Unprocessable(
            f"path.key: must match {KEY}", slug="validation-error", title="Request validation failed"
        )
    return await _put(
        request, request.stream(), key=key, account=account, job_id=job_id, kind=kind, state=state
    )


@router.post("/ingest", summary="Fetch an image from an http(s) URL and store it (SSRF-safe)")
async def ingest_url(request: Request, body: IngestBody, _: Operator) -> JSONResponse:
    settings = _settings(request)
    existing = await run_in_threadpool(_existing, request.app.state.sessions, body.key)
    if existing is not None:
        return JSONResponse(existing, 200)
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


def _existing(sessions: sessionmaker[Session], key: str) -> dict[str, Any] | None:
    with sessions() as session:
        obj = objects.by_key(session, key)
        return public(obj) if obj is not None else None


@router.get("/objects/{object_id}", summary="An object's metadata")
def get_object(object_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        return public(objects.get(session, object_id))


@router.get("/by-key/{key:path}", summary="The object stored under a key")
def get_by_key(key: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        obj = objects.by_key(session, key)
        if obj is None:
            raise NotFound(f"no object under key {key!r}", slug="unknown-object", title="Unknown object")
        return public(obj)


@router.get("/objects/{object_id}/content", summary="An object's bytes")
def get_content(object_id: str, _: Reader, request: Request, session: SessionDep) -> BlobResponse:
    with session.begin():
        obj = objects.get(session, object_id)
        if obj.state == "deleted":
            raise NotFound(f"object {object_id} was deleted", slug="object-deleted", title="Object deleted")
    return BlobResponse(
        _blobs(request).path(obj.sha256), media_type=obj.content_type, headers=_download_headers(obj)
    )


@router.post("/objects/{object_id}/commit", summary="Attach a staged upload to its job (idempotent)")
def commit_object(
    object_id: str,
    body: CommitBody,
    _: Operator,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, public(objects.commit(s, object_id, body.job_id))))


Discarder = Annotated[Caller, Depends(allow("main-api", "operator", "admin"))]


@router.post("/objects/{object_id}/delete", summary="Delete an object (idempotent)")
def delete_object(
    object_id: str, caller: Discarder, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        obj = objects.get(s, object_id)
        # Main API may only take back an upload whose job it failed to create (still staging).
        if caller.name == "main-api" and obj.state != "staging":
            raise Forbidden(f"object {object_id} is {obj.state}; only a staging upload can be discarded")
        return 200, public(objects.delete(s, obj))

    return store.run(session, idem, act)


@router.post("/jobs/{job_id}/objects/delete", summary="Delete every object of a job (compensation)")
def delete_job_objects(
    job_id: str, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        deleted = [public(objects.delete(s, obj)) for obj in objects.for_job(s, job_id)]
        return 200, {"jobId": job_id, "deleted": [o["id"] for o in deleted]}

    return store.run(session, idem, act)


@router.get("/jobs/{job_id}/objects", summary="A job's objects, deleted ones included (for the auditor)")
def list_job_objects(job_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        return {"jobId": job_id, "items": [public(o) for o in objects.for_job(session, job_id)]}


class NotConfigured(Problem):
    status, slug, title = 503, "not-configured", "This service is missing a setting"


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _download_headers(obj: Any) -> dict[str, str]:
    """Served as what it was sniffed to be, and nothing else: no content sniffing, a download
    rather than a page, no scripts even if a polyglot file is opened directly."""
    ext = _EXTENSIONS.get(obj.content_type, "bin")
    return {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="{obj.id}.{ext}"',
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def _signature(key: bytes, object_id: str, expires: int) -> str:
    return hmac.new(key, f"{object_id}:{expires}".encode(), hashlib.sha256).hexdigest()


@router.post("/objects/{object_id}/download-url", summary="A signed, expiring link to an object")
def download_url(
    object_id: str, body: DownloadUrlBody, _: Reader, request: Request, session: SessionDep
) -> dict[str, Any]:
    with session.begin():
        obj = objects.get(session, object_id)
        if obj.state == "deleted":
            raise NotFound(f"object {object_id} was deleted", slug="object-deleted", title="Object deleted")
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
    return {
        "url": f"{base}/v1/download/{object_id}?expires={expires}&signature={sig}",
        "expiresAt": dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(),
    }


@router.get("/download/{object_id}", summary="Download through a signed link (no token needed)")
def download(
    object_id: str,
    expires: Annotated[int, Query(ge=0, le=MAX_ROW_ID)],
    signature: Annotated[str, Query(max_length=128)],
    request: Request,
    session: SessionDep,
) -> BlobResponse:
    expected = _signature(request.app.state.url_key, object_id, expires)
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise Forbidden("the link's signature is not valid", slug="bad-signature", title="Invalid link")
    if expires < utcnow().timestamp():
        raise Forbidden("the link has expired; ask for a new one", slug="link-expired", title="Link expired")
    with session.begin():
        obj = objects.get(session, object_id)
        if obj.state == "deleted":
            raise NotFound(f"object {object_id} was deleted", slug="object-deleted", title="Object deleted")
    return BlobResponse(
        _blobs(request).path(obj.sha256), media_type=obj.content_type, headers=_download_headers(obj)
    )
