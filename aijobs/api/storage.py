"""Storage's contract: what its callers send and what it answers, one model per body.

A stored object is an image under a caller-chosen key (idempotent by key), staged until its job
commits it, deleted by the job's compensation. Its bytes travel outside JSON (``PUT`` and
``GET .../content``, or a signed download link), but for the bulk read of a worker's leased
inputs (:class:`ContentsRequest`), where they travel base64 in each item's answer. A batch job's
inputs are the committed images under a key prefix (:class:`ObjectPage`, listed page by page);
its results are summed up in a manifest, an object of JSON lines (kind ``manifest``) only the operator stores.
A batch may instead name its images in an image list (kind ``list``, :mod:`aijobs.api.imagelist`),
a text object whose entries the operator looks up together (:class:`LookupRequest`).
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import Field

from aijobs.api.base import Answer, Request
from aijobs.api.fields import Instant, Int, Text, Timestamp
from aijobs.api.rules import ACCOUNT_NAME, HTTP_URL_PORTABLE

__all__ = [
    "KEY",
    "MANIFEST_TYPE",
    "MAX_BULK_CONTENT_BYTES",
    "MAX_BULK_OBJECTS",
    "MAX_LOOKUP_IDS",
    "SHA256",
    "CommitRequest",
    "ContentsRequest",
    "DeletedObjects",
    "DownloadLink",
    "DownloadLinkRequest",
    "ImageKind",
    "IngestRequest",
    "Instant",
    "JobObjects",
    "LookupRequest",
    "ObjectContent",
    "ObjectKind",
    "ObjectPage",
    "ObjectPut",
    "ObjectState",
    "StoredObject",
]

# A key as callers name objects: the job's name and the input's, e.g. ``ns/job/input-0``.
KEY = r"^[A-Za-z0-9._:/-]{1,255}$"
ImageKind = Literal["input", "result"]
# A manifest is a batch's results, one JSON line per input; a list, a batch's inputs named one
# per line (aijobs.api.imagelist): both text, never sniffed as images.
ObjectKind = Literal["input", "result", "manifest", "list"]
MANIFEST_TYPE = "application/x-ndjson"
ObjectState = Literal["staging", "committed", "deleted"]


class StoredObject(Answer):
    """An object's metadata; ``jobId`` is unset until an upload is committed to its job."""

    id: str
    key: str
    account: str
    job_id: str | None = None
    kind: ObjectKind
    sha256: str = Field(
        description="The content's SHA-256, hex: equal keys with equal digests are one object"
    )
    size: int = Field(description="Bytes")
    content_type: str = Field(
        description="Sniffed from the bytes: image/png, image/jpeg or image/webp; "
        "application/x-ndjson for a manifest, text/plain for an image list"
    )
    width: int = Field(description="Pixels; 0 for a manifest or a list")
    height: int = Field(description="Pixels; 0 for a manifest or a list")
    state: ObjectState
    created_at: Instant


class JobObjects(Answer):
    """A job's objects, deleted ones included (the auditor compares them with the job). Asked
    with a ``limit``, a page of them in id order: ``next`` is the ``after`` of the next page (null
    on the last, and when every object was answered at once)."""

    job_id: str
    items: list[StoredObject]
    next: str | None = None


class ObjectPage(Answer):
    """An account's committed inputs under a key prefix, in byte order of their keys: ``next``
    is the last key of a full page, the ``after`` of the next one (null on the last page)."""

    items: list[StoredObject]
    next: str | None


class DeletedObjects(Answer):
    """What a job's compensation deleted: every object of the job, by id."""

    job_id: str
    deleted: list[str]


class DownloadLink(Answer):
    """A signed link anyone holding it may download through, until ``expiresAt``."""

    url: str
    expires_at: Instant


class IngestRequest(Request):
    """Fetch an image from a URL (SSRF-safe) and store it under ``key``."""

    key: str = Field(pattern=KEY)
    url: str = Field(max_length=2048, pattern=HTTP_URL_PORTABLE)
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    job_id: Text | None = Field(default=None, max_length=128)
    kind: ImageKind = "input"
    state: Literal["staging", "committed"] = "staging"


class CommitRequest(Request):
    """Attach a staged upload to its job."""

    job_id: Text = Field(min_length=1, max_length=128)


class DownloadLinkRequest(Request):
    """A link valid for ``ttlSeconds``, or until ``expiresAt`` (the same expiry, the same link)."""

    ttl_seconds: Int = Field(default=7 * 24 * 3600, ge=60, le=30 * 24 * 3600)
    expires_at: Timestamp | None = Field(
        default=None, description="An exact expiry instead of a TTL: the same expiry gives the same link"
    )


MAX_BULK_OBJECTS = 100  # images in one bulk put: a worker's lease of results, with room


SHA256 = r"^[0-9a-f]{64}$"  # a SHA-256 digest, lowercase hex


class ObjectPut(Request):
    """One object of a bulk put (``POST /v1/bulk/objects``): what ``PUT /v1/objects/{key}`` takes
    in its path and query, its bytes being the matching file part of the same request."""

    key: str = Field(pattern=KEY, description="The key to store under, the caller's name")
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    job_id: str | None = Field(default=None, max_length=128)
    kind: ImageKind = Field(default="input", description="A bulk put stores images only, never a manifest")
    state: Literal["staging", "committed"] = "staging"
    sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="The file's digest, as its sender computed it: bytes that hash otherwise are refused "
        "(422 digest-mismatch); a result so vouched for has its header checked, not its pixels decoded",
    )


# The bytes of one bulk read's answer, at most: an item past it is answered ``read-alone`` (fetch
# it with ``GET /v1/objects/{id}/content``), so one answer never holds more than this in memory.
MAX_BULK_CONTENT_BYTES = 32 * 1024 * 1024


class ContentsRequest(Request):
    """``POST /v1/bulk/contents``: the bytes of many objects in one request (a worker's leased
    inputs), each answered as ``GET /v1/objects/{id}/content`` would be."""

    ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]],
        Field(min_length=1, max_length=MAX_BULK_OBJECTS, description="Object ids, answered in this order"),
    ]


MAX_LOOKUP_IDS = 1000  # objects looked up in one request: an image list's ids, a page at a time


class LookupRequest(Request):
    """``POST /v1/bulk/lookup``: many objects' metadata in one request (the ids an image list
    names), each answered as ``GET /v1/objects/{id}`` would be."""

    ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]],
        Field(min_length=1, max_length=MAX_LOOKUP_IDS, description="Object ids, answered in this order"),
    ]


class ObjectContent(Answer):
    """One object's bytes in a bulk read's answer."""

    id: str
    sha256: str = Field(description="The content's SHA-256, hex")
    size: int = Field(description="Bytes")
    content_type: str
    content: str = Field(description="The object's bytes, base64 (RFC 4648, padded)")

    def data(self) -> bytes:
        return base64.b64decode(self.content, validate=True)
