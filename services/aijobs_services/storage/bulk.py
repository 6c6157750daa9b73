"""``POST /v1/bulk/objects``: many images stored in one request, each exactly as
``PUT /v1/objects/{key}`` stores it and answered on its own (:mod:`aijobs.api.bulk`'s answer);
``POST /v1/bulk/contents``: many objects' bytes read in one request, each as
``GET /v1/objects/{id}/content`` reads it; ``POST /v1/bulk/lookup``: many objects' metadata, each
as ``GET /v1/objects/{id}`` answers it (the ids of an image list, checked by the operator before
it prices the batch).

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

A worker fetches its leased inputs together for the same reason: one request, one authentication
and one statement for the lease's rows, then each blob read from disk. The bytes travel base64 in
each item's JSON answer (a third more bytes, decoded in C at GB/s: far cheaper than an exchange
per image); an answer holds at most ``MAX_BULK_CONTENT_BYTES`` of them, and an item past that
is answered ``read-alone``, to be fetched by the single route. A read changes nothing: no key.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker

from aijobs.api.bulk import BulkAnswer, ItemAnswer
from aijobs.api.storage import (
    MAX_BULK_CONTENT_BYTES,
    MAX_BULK_OBJECTS,
    ContentsRequest,
    LookupRequest,
    ObjectPut,
)
from aijobs_services.kit.app import SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.problems import Problem, Unprocessable, documented, read_item
from aijobs_services.storage import objects
from aijobs_services.storage.api import Reader, public, reading
from aijobs_services.storage.blobs import BlobStore
from aijobs_services.storage.settings import StorageSettings

MAX_OBJECTS = MAX_BULK_OBJECTS

Writer = Annotated[Caller, Depends(allow("main-api", "operator", "worker", "admin"))]

router = APIRouter(prefix="/v1", tags=["storage"])


class BadBundle(Unprocessable):
    slug, title = "bad-bundle", "The items and files do not match"


@dataclass(frozen=True)
class _Part:
    """An item of a bulk put that reads as an :class:`ObjectPut`, with its file."""

    index: int  # its place in the request
    key: str  # what its answer is keyed by
    item: ObjectPut
    upload: UploadFile


class ReadAlone(Problem):
    """An item of a bulk read past the answer's bound of bytes: fetch it by the single route."""

    status, slug, title = 413, "read-alone", "Read this object alone"


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
    answers: dict[int, ItemAnswer] = {}
    accepted: list[_Part] = []
    for n, (raw, upload) in enumerate(zip(_items(items, len(files)), files, strict=True)):
        named = raw.get("key") if isinstance(raw, dict) else None
        key = named if isinstance(named, str) else f"#{n}"
        item = read_item(ObjectPut, raw) if isinstance(raw, dict) else BadBundle(f"item {n} is not an object")
        if isinstance(item, Problem):
            answers[n] = ItemAnswer(key=key, status=item.status, body=item.body(request.url.path))
        else:
            accepted.append(_Part(n, key, item, upload))
    from_worker = caller.name == "worker"
    stored = await run_in_threadpool(
        _store, request.app.state.sessions, blobs, settings, accepted, from_worker
    )
    for part, outcome in zip(accepted, stored, strict=True):
        if isinstance(outcome, Problem):
            answer = ItemAnswer(key=part.key, status=outcome.status, body=outcome.body(request.url.path))
        else:
            created, obj = outcome
            body = public(obj).model_dump(by_alias=True, mode="json")
            answer = ItemAnswer(key=part.key, status=201 if created else 200, replayed=not created, body=body)
        answers[part.index] = answer
    return BulkAnswer(items=[answers[n] for n in range(len(files))])


def _store(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    accepted: list[_Part],
    from_worker: bool,
) -> list[objects.Stored | Problem]:
    """The accepted items' files received and stored together (:func:`objects.store_many`), on
    the one thread: each item's outcome, in order. The volume's flushes are opened before the
    first file is written (:class:`~aijobs_services.storage.blobs.VolumeFlush`)."""
    received: list[objects.Stored | Problem | None] = []
    incoming: list[objects.Incoming] = []
    with blobs.flushes() as flush:
        try:
            for part in accepted:
                item = part.item
                try:
                    staged = blobs.receive_file(part.upload.file, settings.max_object_bytes)
                except Problem as refusal:
                    received.append(refusal)
                    continue
                received.append(None)
                incoming.append(
                    objects.Incoming(
                        staged,
                        item.key,
                        item.account,
                        item.job_id,
                        item.kind,
                        item.state,
                        item.sha256,
                        from_worker,
                    )
                )
        except BaseException:
            for each in incoming:
                blobs.discard(each.staged)
            raise
        outcomes = iter(objects.store_many(sessions, blobs, settings, incoming, flush))
    return [outcome if outcome is not None else next(outcomes) for outcome in received]


@router.post(
    "/bulk/contents",
    summary="Many objects' bytes, each as GET /v1/objects/{id}/content reads it (answered one by one)",
    response_model=BulkAnswer,
)
def read_contents(body: ContentsRequest, _: Reader, request: Request) -> Response:
    """Each item's answer, keyed by the object's id: 200 with an ``ObjectContent`` (its bytes
    base64), or the single read's problem (404 ``unknown-object``, 404 ``object-deleted``), or
    413 ``read-alone`` once the answer holds ``MAX_BULK_CONTENT_BYTES``."""
    with reading(request.app.state.engine) as conn:
        found = objects.readable_many(conn, body.ids)
    blobs: BlobStore = request.app.state.blobs
    room = MAX_BULK_CONTENT_BYTES
    answers: list[dict[str, Any]] = []
    for object_id in body.ids:
        content = found[object_id]
        if not isinstance(content, Problem) and content.size > room:
            content = ReadAlone(
                f"object {object_id} ({content.size} bytes) would take this answer past "
                f"{MAX_BULK_CONTENT_BYTES} bytes: GET /v1/objects/{object_id}/content"
            )
        if isinstance(content, Problem):
            problem = content.body(request.url.path)
            answers.append({"key": object_id, "status": content.status, "body": problem})
            continue
        room -= content.size
        data = base64.b64encode(blobs.path(content.sha256).read_bytes()).decode("ascii")
        item = {
            "id": object_id,
            "sha256": content.sha256,
            "size": content.size,
            "contentType": content.content_type,
            "content": data,
        }
        answers.append({"key": object_id, "status": 200, "body": item})
    # Written straight to JSON: validating megabytes of base64 back through the models would
    # cost more than reading the blobs.
    return Response(json.dumps({"items": answers}), media_type="application/json")


@router.post(
    "/bulk/lookup",
    summary="Many objects' metadata, each as GET /v1/objects/{id} answers it (answered one by one)",
    response_model=BulkAnswer,
    responses=documented(objects.UnknownObject),
)
def lookup(body: LookupRequest, _: Reader, session: SessionDep) -> BulkAnswer:
    """Each item's answer, keyed by the object's id: 200 with its ``StoredObject`` (a deleted one
    too, as its single read answers it), or 404 ``unknown-object``. One statement for them all."""
    with session.begin():
        found = objects.get_many(session, body.ids)
        answers = []
        for object_id in body.ids:
            obj = found.get(object_id)
            if obj is None:
                problem = objects.UnknownObject(f"no object {object_id!r}")
                answers.append(
                    ItemAnswer(key=object_id, status=problem.status, body=problem.body("/v1/bulk/lookup"))
                )
                continue
            wire = public(obj).model_dump(by_alias=True, mode="json")
            answers.append(ItemAnswer(key=object_id, status=200, body=wire))
    return BulkAnswer(items=answers)
