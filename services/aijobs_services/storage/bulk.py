"""``POST /v1/bulk/objects``: many images stored in one request, each exactly as
``PUT /v1/objects/{key}`` stores it and answered on its own (:mod:`aijobs.api.bulk`'s answer).

A worker finishes its leased images together; storing each with a request of its own cost both
sides an HTTP exchange, an authentication and a thread hop per image, which at a GPU's pace (a few
ms an image) was more than the image itself. The body is ``multipart/form-data``, as browsers and
every HTTP client send files: a form field ``items`` (a JSON array of
:class:`~aijobs.api.storage.ObjectPut`, what the single put takes in its path and query) and one
``files`` part per item, in the same order.

Each item is idempotent by its key as the single put is (the same bytes again: 200 with the
first object; other bytes: 409 ``key-taken``), so a request whose answer was lost is sent again
whole. One item's refusal (an undecodable image, a quota spent, a malformed item) is that item's
answer; the others are stored. Only images travel in bulk: a batch's manifest, which the operator
alone writes, keeps its single route.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from aijobs.api.bulk import BulkAnswer, ItemAnswer
from aijobs.api.storage import MAX_BULK_OBJECTS, ObjectPut
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.problems import Problem, Unprocessable, documented, read_item
from aijobs_services.storage import objects
from aijobs_services.storage.api import public
from aijobs_services.storage.blobs import BlobStore
from aijobs_services.storage.settings import StorageSettings

MAX_OBJECTS = MAX_BULK_OBJECTS

Writer = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]

router = APIRouter(prefix="/v1", tags=["storage"])


class BadBundle(Unprocessable):
    slug, title = "bad-bundle", "The items and files do not match"


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1024 * 1024):
        yield chunk


def _items(items: str, files: int) -> list[Any]:
    try:
        found = json.loads(items)
    except ValueError as exc:
        raise BadBundle(f"items is not JSON: {exc}") from exc
    if not isinstance(found, list) or not 1 <= len(found) <= MAX_OBJECTS:
        raise BadBundle(f"items must be a JSON array of 1 to {MAX_OBJECTS} objects")
    if len(found) != files:
        raise BadBundle(f"{len(found)} item(s) but {files} file part(s): one file per item, in order")
    return found


@router.post(
    "/bulk/objects",
    summary="Store many images, each as PUT /v1/objects/{key} would (idempotent by key, answered one by one)",
    response_model=BulkAnswer,
    responses=documented((400, "http-400", "the body is not readable as multipart/form-data"), BadBundle),
)
async def put_objects(
    request: Request,
    caller: Writer,
    items: Annotated[
        str,
        Form(
            min_length=2,  # "[]" at least: a form field sent empty reads as absent
            description=f"A JSON array of up to {MAX_OBJECTS} items: key, account, jobId, kind, state",
        ),
    ],
    files: Annotated[
        list[UploadFile], File(min_length=1, description="One image per item, in the order of items")
    ],
) -> BulkAnswer:
    """Each item's answer is the single put's: 201 stored, 200 the key held these bytes already,
    or its problem (409, 413, 415, 422, 507)."""
    settings: StorageSettings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    answers = []
    for n, (raw, upload) in enumerate(zip(_items(items, len(files)), files, strict=True)):
        named = raw.get("key") if isinstance(raw, dict) else None
        key = named if isinstance(named, str) else f"#{n}"
        item = read_item(ObjectPut, raw) if isinstance(raw, dict) else BadBundle(f"item {n} is not an object")
        if isinstance(item, Problem):
            answers.append(ItemAnswer(key=key, status=item.status, body=item.body(request.url.path)))
            continue
        try:
            staged = await blobs.receive(_chunks(upload), settings.max_object_bytes)
            created, obj = await run_in_threadpool(
                objects.store_staged,
                request.app.state.sessions,
                blobs,
                settings,
                staged,
                key=item.key,
                account=item.account,
                job_id=item.job_id,
                kind=item.kind,
                state=item.state,
            )
        except Problem as refusal:
            answers.append(ItemAnswer(key=key, status=refusal.status, body=refusal.body(request.url.path)))
            continue
        body = public(obj).model_dump(by_alias=True, mode="json")
        answers.append(ItemAnswer(key=key, status=201 if created else 200, replayed=not created, body=body))
    return BulkAnswer(items=answers)
