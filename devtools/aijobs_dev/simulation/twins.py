"""In-memory twins of the five services, for the deterministic simulator only.

Each twin answers the routes the operator calls with the status codes and bodies its real service
gives (``tests/simulation/test_twins_contract.py`` runs one sequence of calls against a twin and
against the real service on PostgreSQL and compares them), and keeps the real semantics that the
money promise rests on:

- Idempotency-Key: a replay with the same body gets the first answer (4xx included, 5xx never
  stored); the same key with another body is refused with 422 ``idempotency-key-reused``.
- Payment: holds move credits from available to held; capture is final and repeatable; a hold
  past its expiry can't be captured (409 ``hold-expired``, credits returned); releasing a captured
  hold is refused; a balance never goes negative.
- Storage: a put is idempotent by object key; a full disk is 507 with nothing stored.
- AI: one task per job; cancel is idempotent; a task moves only when the simulated worker moves it.

No clock is read and no random number drawn here: time comes from the simulator's clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aijobs.api.rules import MAX_HOLD

__all__ = ["AITwin", "AuthTwin", "MainTwin", "PaymentTwin", "Reply", "StorageTwin", "Twin"]

PROBLEM = "https://aijobs.io/problems/"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @classmethod
    def problem(cls, status: int, slug: str, detail: str, **extra: Any) -> Reply:
        return cls(
            status, {"type": PROBLEM + slug, "title": slug, "status": status, "detail": detail, **extra}
        )


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Twin:
    """Routing and the idempotency store every twin shares."""

    name = "twin"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self._idem: dict[str, tuple[str, Reply]] = {}
        self._ids = 0

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self.name}-{self._ids:06d}"

    def handle(
        self, method: str, path: str, key: str | None, body: Any, params: dict[str, str], content: bytes
    ) -> Reply:
        route = self.route(method, path)
        if route is None:
            return Reply.problem(404, "not-found", f"no route {method} {path}")
        action, args = route
        if key is None:
            return action(*args, body=body, params=params, content=content)
        fingerprint = hashlib.sha256(
            json.dumps([method, path, body, params, content.hex()], sort_keys=True).encode()
        ).hexdigest()
        stored = self._idem.get(key)
        if stored is not None:
            if stored[0] != fingerprint:
                return Reply.problem(
                    422,
                    "idempotency-key-reused",
                    f"Idempotency-Key {key!r} was first used for a different request",
                )
            return stored[1]
        reply = action(*args, body=body, params=params, content=content)
        if reply.status < 500:
            self._idem[key] = (fingerprint, reply)
        return reply

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        raise NotImplementedError


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p][1:]  # drop "v1"


# ------------------------------------------------------------------------------------- auth
class AuthTwin(Twin):
    name = "auth"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.bindings: set[tuple[str, str]] = set()

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        if (method, path) == ("POST", "/v1/authorize-charge"):
            return self.authorize, ()
        return None

    def authorize(self, *, body: Any, **_: Any) -> Reply:
        if (body["namespace"], body["account"]) not in self.bindings:
            return Reply.problem(
                403,
                "tenant-not-allowed",
                f"namespace {body['namespace']!r} may not charge {body['account']!r}",
            )
        return Reply(200, {"namespace": body["namespace"], "account": body["account"], "allowed": True})


# ---------------------------------------------------------------------------------- payment
@dataclass
class Hold:
    id: str
    account: str
    job_id: str
    amount: int
    state: str
    expires_at: dt.datetime
    created_at: dt.datetime
    settled_at: dt.datetime | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "jobId": self.job_id,
            "amount": self.amount,
            "state": self.state,
            "expiresAt": _iso(self.expires_at),
            "createdAt": _iso(self.created_at),
            "settledAt": _iso(self.settled_at) if self.settled_at else None,
        }


@dataclass
class Account:
    available: int = 0
    held: int = 0
    revenue: int = 0


class PaymentTwin(Twin):
    name = "payment"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "POST" and p == ["holds"]:
            return self.place, ()
        if method == "POST" and len(p) == 3 and p[0] == "holds" and p[2] in ("capture", "release"):
            return (self.capture if p[2] == "capture" else self.release), (p[1],)
        if method == "GET" and len(p) == 2 and p[0] == "holds":
            return self.get, (p[1],)
        if method == "GET" and len(p) == 3 and p[0] == "jobs" and p[2] == "charges":
            return self.charges, (p[1],)
        return None

    def _unhold(self, hold: Hold, state: str) -> None:
        account = self.accounts[hold.account]
        account.held -= hold.amount
        if state == "captured":
            account.revenue += hold.amount
        else:
            account.available += hold.amount
        hold.state, hold.settled_at = state, self.clock()
        assert account.available >= 0 and account.held >= 0, "a balance went negative"

    def place(self, *, body: Any, **_: Any) -> Reply:
        now = self.clock()
        expires = _parse(body["expiresAt"]) if body.get("expiresAt") else now + dt.timedelta(hours=1)
        if not now < expires <= now + MAX_HOLD:
            return Reply.problem(
                422, "bad-expiry", f"expiresAt must be in the future and within {MAX_HOLD.days} days"
            )
        account = self.accounts.get(body["account"])
        if account is None:
            return Reply.problem(404, "unknown-account", f"no account {body['account']!r}")
        amount = body["amount"]
        if account.available < amount:
            return Reply.problem(
                402,
                "insufficient-credits",
                f"account {body['account']!r} has {account.available} credits available; "
                f"the hold needs {amount}",
                available=account.available,
                requested=amount,
            )
        account.available -= amount
        account.held += amount
        hold = Hold(self.new_id("hold"), body["account"], body["jobId"], amount, "active", expires, now)
        self.holds[hold.id] = hold
        return Reply(201, hold.public())

    def get(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        return Reply(200, hold.public())

    def capture(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        if hold.state == "captured":
            return Reply(200, hold.public())
        if hold.state != "active":
            return Reply.problem(
                409, "hold-settled", f"hold {hold_id} was {hold.state}; it can't be captured"
            )
        if hold.expires_at <= self.clock():
            self._unhold(hold, "expired")
            return Reply.problem(409, "hold-expired", f"hold {hold_id} expired; credits returned")
        self._unhold(hold, "captured")
        return Reply(200, hold.public())

    def release(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        if hold.state == "captured":
            return Reply.problem(409, "hold-settled", f"hold {hold_id} was captured; it can't be released")
        if hold.state == "active":
            self._unhold(hold, "released")
        return Reply(200, hold.public())

    def charges(self, job_id: str, **_: Any) -> Reply:
        holds = [h for h in self.holds.values() if h.job_id == job_id]
        return Reply(
            200,
            {
                "jobId": job_id,
                "charged": sum(h.amount for h in holds if h.state == "captured"),
                "holds": [h.public() for h in holds],
            },
        )

    def sweep(self) -> None:
        """Payment's expiry sweep: an active hold past its expiry returns its credits."""
        now = self.clock()
        for hold in self.holds.values():
            if hold.state == "active" and hold.expires_at <= now:
                self._unhold(hold, "expired")


# ---------------------------------------------------------------------------------- storage
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
@dataclass
class Task:
    id: str
    job_id: str
    account: str
    pipeline: str
    params: dict[str, Any]
    input_object_id: str
    run_at: dt.datetime
    state: str = "scheduled"
    cancel_requested: bool = False
    result_object_id: str | None = None
    error: str | None = None
    reruns: int = 0
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "jobId": self.job_id,
            "account": self.account,
            "pipeline": self.pipeline,
            "params": self.params,
            "inputObjectId": self.input_object_id,
            "runAt": _iso(self.run_at),
            "state": self.state,
            "reruns": self.reruns,
            "cancelRequested": self.cancel_requested,
            "resultObjectId": self.result_object_id,
            "error": self.error,
            "updatedAt": _iso(self.updated_at),
        }


class AITwin(Twin):
    name = "ai"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.tasks: dict[str, Task] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if (method, p) == ("POST", ["tasks"]):
            return self.create, ()
        if (method, p) == ("POST", ["tasks", "query"]):
            return self.query, ()
        if method == "GET" and len(p) == 2 and p[0] == "tasks":
            return self.get, (p[1],)
        if method == "POST" and len(p) == 3 and p[0] == "tasks" and p[2] == "cancel":
            return self.cancel, (p[1],)
        return None

    def create(self, *, body: Any, **_: Any) -> Reply:
        existing = next((t for t in self.tasks.values() if t.job_id == body["jobId"]), None)
        definition = (body["pipeline"], body.get("params") or {}, body["inputObjectId"])
        if existing is not None:
            if (existing.pipeline, existing.params, existing.input_object_id) == definition:
                return Reply(200, existing.public())
            return Reply.problem(
                409, "job-has-task", f"job {body['jobId']} already has task {existing.id}", taskId=existing.id
            )
        now = self.clock()
        run_at = _parse(body["runAt"]) if body.get("runAt") else now
        task = Task(
            self.new_id("task"), body["jobId"], body["account"], *definition, run_at=run_at, updated_at=now
        )
        self.tasks[task.id] = task
        return Reply(201, task.public())

    def get(self, task_id: str, **_: Any) -> Reply:
        task = self.tasks.get(task_id)
        if task is None:
            return Reply.problem(404, "unknown-task", f"no task {task_id!r}")
        return Reply(200, task.public())

    def query(self, *, body: Any, **_: Any) -> Reply:
        jobs = set(body.get("jobIds") or [])
        return Reply(200, {"items": [t.public() for t in self.tasks.values() if t.job_id in jobs]})

    def cancel(self, task_id: str, **_: Any) -> Reply:
        task = self.tasks.get(task_id)
        if task is None:
            return Reply.problem(404, "unknown-task", f"no task {task_id!r}")
        if task.state not in ("succeeded", "failed", "cancelled"):
            task.cancel_requested = True
            if task.state == "scheduled":
                task.state = "cancelled"
            task.updated_at = self.clock()
        return Reply(200, task.public())


# ------------------------------------------------------------------------------------- main
class MainTwin(Twin):
    name = "main"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.deliveries: dict[str, dict[str, Any]] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        if (method, path) == ("POST", "/v1/deliveries"):
            return self.deliver, ()
        return None

    def deliver(self, *, body: Any, **_: Any) -> Reply:
        delivery = self.deliveries.setdefault(body["jobUid"], {**body, "state": "pending"})
        return Reply(201, {"id": body["jobUid"], "state": delivery["state"]})
