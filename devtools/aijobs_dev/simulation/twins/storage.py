"""The storage service's twin: its answers are Storage's wire models (:mod:`aijobs.api.storage`).

It keeps no image's bytes and sniffs no image (every image is a 4x4 PNG to it), but a manifest
or an image list is checked as Storage checks it (UTF-8), an image list's bytes are kept and
served (the operator reads them), ingest refuses the private addresses Storage refuses (any
other URL is an image to it), and listings page as Storage's do: an account's
committed inputs under a key prefix in key order (Python compares text by code point, which
for UTF-8 is Storage's bytewise order), a job's objects in id order (the twin's ids are
zero-padded, so that is the order they were stored in)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from aijobs.api import storage as wire
from aijobs.api.bulk import BulkAnswer, ItemAnswer
from aijobs.api.fields import Timestamp
from aijobs.api.imagelist import LIST_TYPE
from aijobs.api.rules import ACCOUNT_NAME, MAX_HOLD
from aijobs_dev.simulation.twins.base import Reply, Twin, _parts


@dataclass
class StoredObject:
    id: str
    key: str
    account: str
    job_id: str | None
    kind: wire.ObjectKind
    sha256: str
    size: int
    state: Literal["staging", "committed", "deleted"]
    created_at: dt.datetime

    def wire(self) -> wire.StoredObject:
        """As Storage answers it; every twin image is a 4x4 PNG (the twin keeps no bytes)."""
        text = self.kind in ("manifest", "list")
        return wire.StoredObject(
            id=self.id,
            key=self.key,
            account=self.account,
            job_id=self.job_id,
            kind=self.kind,
            sha256=self.sha256,
            size=self.size,
            content_type=_TEXT_TYPES.get(self.kind, "image/png"),
            width=0 if text else 4,
            height=0 if text else 4,
            state=self.state,
            created_at=self.created_at,
        )

    def public(self) -> dict[str, Any]:
        return _body(self.wire())


_TEXT_TYPES = {"manifest": wire.MANIFEST_TYPE, "list": LIST_TYPE}
# Where Storage's ingest never fetches from (unless allow-listed, which the twin never is): the
# private, loopback and link-local ranges, as the world's URLs use them.
_PRIVATE = re.compile(r"^https?://(10\.|127\.|169\.254\.|192\.168\.|localhost)")


def _body(
    answer: wire.StoredObject | wire.JobObjects | wire.DeletedObjects | wire.DownloadLink | wire.ObjectPage,
) -> dict[str, Any]:
    return answer.model_dump(by_alias=True, mode="json")


class _Query(BaseModel):
    """A route's query parameters, checked by its rules; others are ignored, as FastAPI does."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class _PutQuery(_Query):
    account: str
    job_id: str | None = None
    kind: wire.ObjectKind = "input"
    state: Literal["staging", "committed"] = "staging"


class _ObjectQuery(_Query):
    """``GET /v1/objects``'s query."""

    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    prefix: str = Field(pattern=wire.KEY)
    created_before: Timestamp | None = None
    after: str | None = Field(default=None, pattern=wire.KEY)
    limit: int = Field(default=500, ge=1, le=1000)


class _JobObjectsQuery(_Query):
    """``GET /v1/jobs/{id}/objects``'s query."""

    after: str | None = Field(default=None, max_length=40)
    limit: int | None = Field(default=None, ge=1, le=1000)


def _invalid(exc: ValidationError) -> Reply:
    return Reply.problem(422, "validation-error", str(exc))


class StorageTwin(Twin):
    name = "storage"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.objects: dict[str, StoredObject] = {}
        self.lists: dict[str, bytes] = {}  # an image list's bytes, by object id
        self.ingest_allow: tuple[str, ...] = ()  # URL prefixes fetched though private (allow-listed)
        self.disk_full = False

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "PUT" and p[:1] == ["objects"] and len(p) >= 2:
            return self.put, ("/".join(p[1:]),)
        if method == "GET" and p == ["objects"]:
            return self.list_objects, ()
        if method == "GET" and len(p) == 2 and p[0] == "objects":
            return self.get, (p[1],)
        if method == "GET" and len(p) == 3 and p[0] == "objects" and p[2] == "content":
            return self.content, (p[1],)
        if method == "POST" and p == ["bulk", "lookup"]:
            return self.lookup, ()
        if method == "POST" and p == ["ingest"]:
            return self.ingest, ()
        if method == "POST" and len(p) == 3 and p[0] == "objects" and p[2] == "commit":
            return self.commit, (p[1],)
        if method == "POST" and len(p) == 3 and p[0] == "objects" and p[2] == "download-url":
            return self.download_url, (p[1],)
        if method == "GET" and len(p) == 3 and p[0] == "jobs" and p[2] == "objects":
            return self.list_job, (p[1],)
        if method == "POST" and len(p) == 4 and p[0] == "jobs" and p[2:] == ["objects", "delete"]:
            return self.delete_job, (p[1],)
        return None

    def store(
        self,
        key: str,
        account: str,
        job_id: str | None,
        kind: wire.ObjectKind,
        content: bytes,
        state: Literal["staging", "committed"] = "committed",
    ) -> Reply:
        sha = hashlib.sha256(content).hexdigest()
        existing = next((o for o in self.objects.values() if o.key == key), None)
        if existing is not None:
            if existing.sha256 != sha:
                return Reply.problem(409, "key-taken", f"key {key!r} holds other content")
            return Reply(200, existing.public())
        if kind in ("manifest", "list"):
            try:
                content.decode("utf-8")
            except UnicodeDecodeError as exc:
                return Reply.problem(415, "unsupported-manifest", f"byte {exc.start} is not UTF-8")
        if self.disk_full:
            return Reply.problem(507, "insufficient-storage", "the disk is full")
        obj = StoredObject(
            self.new_id("obj"), key, account, job_id, kind, sha, len(content), state, self.clock()
        )
        self.objects[obj.id] = obj
        if kind == "list":
            self.lists[obj.id] = content
        return Reply(201, obj.public())

    def put(self, key: str, *, params: dict[str, str], content: bytes, **_: Any) -> Reply:
        """As the operator calls it: the twin has no callers, so a worker's refused manifest
        (403) is Storage's alone."""
        try:
            asked = _PutQuery.model_validate(params)
        except ValidationError as exc:
            return _invalid(exc)
        return self.store(key, asked.account, asked.job_id, asked.kind, content, asked.state)

    def list_objects(self, *, params: dict[str, str], **_: Any) -> Reply:
        try:
            asked = _ObjectQuery.model_validate(params)
        except ValidationError as exc:
            return _invalid(exc)
        found = sorted(
            (
                o
                for o in self.objects.values()
                if o.account == asked.account
                and o.key.startswith(asked.prefix)
                and o.state == "committed"
                and o.kind == "input"
                and o.job_id is None
                and (asked.after is None or o.key > asked.after)
                and (asked.created_before is None or o.created_at <= asked.created_before)
            ),
            key=lambda o: o.key,
        )[: asked.limit]
        full = len(found) == asked.limit
        page = wire.ObjectPage(items=[o.wire() for o in found], next=found[-1].key if full else None)
        return Reply(200, _body(page))

    def get(self, object_id: str, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        return Reply(200, obj.public())

    def content(self, object_id: str, **_: Any) -> Reply:
        """An image list's bytes (the twin keeps no image's: the world's worker needs none)."""
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        if obj.state == "deleted":
            return Reply.problem(404, "object-deleted", f"object {object_id} was deleted")
        return Reply(200, self.lists.get(object_id, b""))

    def lookup(self, *, body: Any, **_: Any) -> Reply:
        try:
            asked = wire.LookupRequest.model_validate(body)
        except ValidationError as exc:
            return _invalid(exc)
        items = []
        for object_id in asked.ids:
            found = self.get(object_id)
            items.append(ItemAnswer(key=object_id, status=found.status, body=found.body))
        return Reply(200, BulkAnswer(items=items).model_dump(by_alias=True, mode="json"))

    def ingest(self, *, body: Any, **_: Any) -> Reply:
        """As the operator calls it: a URL into an object under the caller's key (the same key
        again: its object), or refused when its address is private."""
        try:
            asked = wire.IngestRequest.model_validate(body)
        except ValidationError as exc:
            return _invalid(exc)
        existing = next((o for o in self.objects.values() if o.key == asked.key), None)
        if existing is not None:
            return Reply(200, existing.public())
        if _PRIVATE.match(asked.url) and not asked.url.startswith(self.ingest_allow):
            return Reply.problem(422, "destination-refused", f"url: {asked.url} is a private address")
        content = f"fetched from {asked.url}".encode()
        return self.store(asked.key, asked.account, asked.job_id, asked.kind, content, asked.state)

    def commit(self, object_id: str, *, body: Any, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        if obj.state == "deleted":
            return Reply.problem(409, "object-deleted", f"object {object_id} was deleted")
        obj.state, obj.job_id = "committed", wire.CommitRequest.model_validate(body).job_id
        return Reply(200, obj.public())

    def download_url(self, object_id: str, *, body: Any, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        if obj.state == "deleted":
            return Reply.problem(404, "object-deleted", f"object {object_id} was deleted")
        asked = wire.DownloadLinkRequest.model_validate(body)
        now = self.clock()
        if asked.expires_at is None:
            expires = int(now.timestamp()) + asked.ttl_seconds
        elif now < asked.expires_at <= now + MAX_HOLD:
            expires = int(asked.expires_at.timestamp())
        else:
            return Reply.problem(422, "bad-expiry", "expiresAt must be in the future and within 30 days")
        # Storage signs whole seconds: the link's expiry is the second the caller named.
        at = dt.datetime.fromtimestamp(expires, dt.UTC)
        link = wire.DownloadLink(url=f"http://storage/download/{object_id}", expires_at=at)
        return Reply(200, _body(link))

    def list_job(self, job_id: str, *, params: dict[str, str] | None = None, **_: Any) -> Reply:
        try:
            asked = _JobObjectsQuery.model_validate(params or {})
        except ValidationError as exc:
            return _invalid(exc)
        found = [o for o in self.objects.values() if o.job_id == job_id]
        if asked.after is None and asked.limit is None:
            return Reply(200, _body(wire.JobObjects(job_id=job_id, items=[o.wire() for o in found])))
        paged = sorted((o for o in found if asked.after is None or o.id > asked.after), key=lambda o: o.id)
        paged = paged[: asked.limit]
        full = asked.limit is not None and len(paged) == asked.limit
        answer = wire.JobObjects(
            job_id=job_id, items=[o.wire() for o in paged], next=paged[-1].id if full else None
        )
        return Reply(200, _body(answer))

    def delete_job(self, job_id: str, **_: Any) -> Reply:
        deleted = []
        for obj in self.objects.values():
            if obj.job_id == job_id and obj.state != "deleted":
                obj.state = "deleted"
                deleted.append(obj.id)
        return Reply(200, _body(wire.DeletedObjects(job_id=job_id, deleted=deleted)))
