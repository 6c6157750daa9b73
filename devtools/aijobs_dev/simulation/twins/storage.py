"""The storage service's twin: its answers are Storage's wire models (:mod:`aijobs.api.storage`)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aijobs.api import storage as wire
from aijobs.api.rules import MAX_HOLD
from aijobs_dev.simulation.twins.base import Reply, Twin, _parts


@dataclass
class StoredObject:
    id: str
    key: str
    account: str
    job_id: str | None
    kind: Literal["input", "result"]
    sha256: str
    size: int
    state: Literal["staging", "committed", "deleted"]
    created_at: dt.datetime

    def wire(self) -> wire.StoredObject:
        """As Storage answers it; every twin object is a 4x4 PNG (the twin keeps no bytes)."""
        return wire.StoredObject(
            id=self.id,
            key=self.key,
            account=self.account,
            job_id=self.job_id,
            kind=self.kind,
            sha256=self.sha256,
            size=self.size,
            content_type="image/png",
            width=4,
            height=4,
            state=self.state,
            created_at=self.created_at,
        )

    def public(self) -> dict[str, Any]:
        return _body(self.wire())


def _body(
    answer: wire.StoredObject | wire.JobObjects | wire.DeletedObjects | wire.DownloadLink,
) -> dict[str, Any]:
    return answer.model_dump(by_alias=True, mode="json")


class StorageTwin(Twin):
    name = "storage"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.objects: dict[str, StoredObject] = {}
        self.disk_full = False

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "PUT" and p[:1] == ["objects"] and len(p) >= 2:
            return self.put, ("/".join(p[1:]),)
        if method == "GET" and len(p) == 2 and p[0] == "objects":
            return self.get, (p[1],)
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
        self, key: str, account: str, job_id: str | None, kind: Literal["input", "result"], content: bytes
    ) -> Reply:
        sha = hashlib.sha256(content).hexdigest()
        existing = next((o for o in self.objects.values() if o.key == key), None)
        if existing is not None:
            if existing.sha256 != sha:
                return Reply.problem(409, "key-taken", f"key {key!r} holds other content")
            return Reply(200, existing.public())
        if self.disk_full:
            return Reply.problem(507, "insufficient-storage", "the disk is full")
        obj = StoredObject(
            self.new_id("obj"), key, account, job_id, kind, sha, len(content), "committed", self.clock()
        )
        self.objects[obj.id] = obj
        return Reply(201, obj.public())

    def put(self, key: str, *, params: dict[str, str], content: bytes, **_: Any) -> Reply:
        kind: Literal["input", "result"] = "result" if params.get("kind") == "result" else "input"
        return self.store(key, params["account"], params.get("jobId"), kind, content)

    def get(self, object_id: str, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        return Reply(200, obj.public())

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

    def list_job(self, job_id: str, **_: Any) -> Reply:
        items = [o.wire() for o in self.objects.values() if o.job_id == job_id]
        return Reply(200, _body(wire.JobObjects(job_id=job_id, items=items)))

    def delete_job(self, job_id: str, **_: Any) -> Reply:
        deleted = []
        for obj in self.objects.values():
            if obj.job_id == job_id and obj.state != "deleted":
                obj.state = "deleted"
                deleted.append(obj.id)
        return Reply(200, _body(wire.DeletedObjects(job_id=job_id, deleted=deleted)))
