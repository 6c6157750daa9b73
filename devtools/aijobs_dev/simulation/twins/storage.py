"""The storage service's twin."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aijobs.api.rules import MAX_HOLD
from aijobs_dev.simulation.twins.base import Reply, Twin, _iso, _parse, _parts


@dataclass
class StoredObject:
    id: str
    key: str
    account: str
    job_id: str | None
    kind: str
    sha256: str
    size: int
    state: str

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "account": self.account,
            "jobId": self.job_id,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "contentType": "image/png",
            "width": 4,
            "height": 4,
            "state": self.state,
        }


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

    def store(self, key: str, account: str, job_id: str | None, kind: str, content: bytes) -> Reply:
        sha = hashlib.sha256(content).hexdigest()
        existing = next((o for o in self.objects.values() if o.key == key), None)
        if existing is not None:
            if existing.sha256 != sha:
                return Reply.problem(409, "key-taken", f"key {key!r} holds other content")
            return Reply(200, existing.public())
        if self.disk_full:
            return Reply.problem(507, "insufficient-storage", "the disk is full")
        obj = StoredObject(self.new_id("obj"), key, account, job_id, kind, sha, len(content), "committed")
        self.objects[obj.id] = obj
        return Reply(201, obj.public())

    def put(self, key: str, *, params: dict[str, str], content: bytes, **_: Any) -> Reply:
        return self.store(key, params["account"], params.get("jobId"), params.get("kind", "input"), content)

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
        obj.state, obj.job_id = "committed", body["jobId"]
        return Reply(200, obj.public())

    def download_url(self, object_id: str, *, body: Any, **_: Any) -> Reply:
        obj = self.objects.get(object_id)
        if obj is None:
            return Reply.problem(404, "unknown-object", f"no object {object_id!r}")
        if obj.state == "deleted":
            return Reply.problem(404, "object-deleted", f"object {object_id} was deleted")
        expires = _parse(body["expiresAt"])
        now = self.clock()
        if not now < expires <= now + MAX_HOLD:
            return Reply.problem(422, "bad-expiry", "expiresAt must be in the future and within 30 days")
        return Reply(200, {"url": f"http://storage/download/{object_id}", "expiresAt": _iso(expires)})

    def list_job(self, job_id: str, **_: Any) -> Reply:
        items = [o.public() for o in self.objects.values() if o.job_id == job_id]
        return Reply(200, {"jobId": job_id, "items": items})

    def delete_job(self, job_id: str, **_: Any) -> Reply:
        deleted = []
        for obj in self.objects.values():
            if obj.job_id == job_id and obj.state != "deleted":
                obj.state = "deleted"
                deleted.append(obj.id)
        return Reply(200, {"jobId": job_id, "deleted": deleted})


# --------------------------------------------------------------------------------------- AI
