"""What each saga step does, and what compensation undoes, against the services.

Every call carries an Idempotency-Key derived from the job's uid and the step's name, so a retry
after a timeout, a restart of the operator or a duplicate event never acts twice. A step returns
:class:`~aijobs_operator.core.Done` or :class:`~aijobs_operator.core.Waiting`, raises
:class:`StepFailed` for a definite no, and lets :class:`~aijobs.wire.client.Ambiguous`
through for the engine to retry. Steps never write the saga log: what they learned travels back
in their outcome, and what they send is built from the log alone (see :mod:`aijobs_operator.core`).

Undo works from what the services hold *for the job* (its holds, its objects, its task), not from
what the status remembers, so it is complete even when a response was lost before the status
recorded it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, JobResult
from aijobs.wire.client import Ambiguous, Refused, ServiceClient
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import Done, Policy, Waiting, hold_expiry, idempotency_key
from aijobs_operator.saga import iso, parse


@dataclass(frozen=True)
class Services:
    auth: ServiceClient
    payment: ServiceClient
    storage: ServiceClient
    ai: ServiceClient
    main: ServiceClient


@dataclass
class Job:
    """What a step may read: the job's identity, its order, its saga log (read-only), the time of
    this pass, and the AI task as the bulk follower last saw it."""

    uid: str
    namespace: str
    name: str
    spec: AIImageJobSpec
    status: AIImageJobStatus
    policy: Policy
    now: dt.datetime
    task: dict[str, Any] | None = None

    def ids(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for rec in self.status.steps:
            merged.update(rec.remote_ids)
        return merged


class StepFailed(Exception):
    """A definite failure: compensate now. ``reason`` is CamelCase, for conditions and events."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _refused(reason: str, exc: Refused) -> StepFailed:
    return StepFailed(reason, f"{exc.service} refused: {exc.detail or exc.kind}")


StepFn = Callable[[Job, Services, OperatorSettings], Awaitable[Done | Waiting]]


async def charge(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    spec = job.spec
    try:
        await svc.auth.json(
            "POST", "/v1/authorize-charge", json={"namespace": job.namespace, "account": spec.account}
        )
    except Refused as exc:
        raise _refused("TenantNotAllowed", exc) from exc
    # The expiry comes from the log (the deadline fixed at acceptance), never from the clock: a
    # retry under the same key must send the same body.
    expires = hold_expiry(job.status, job.policy)
    body = {"account": spec.account, "jobId": job.uid, "amount": spec.price, "expiresAt": iso(expires)}
    try:
        hold = await svc.payment.json("POST", "/v1/holds", key=idempotency_key(job.uid, "charge"), json=body)
    except Refused as exc:
        reason = "InsufficientCredits" if exc.status == 402 else "ChargeRefused"
        raise _refused(reason, exc) from exc
    return Done(f"held {spec.price} credits (hold {hold['id']})", {"holdId": hold["id"]})


async def upload(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    source, account = job.spec.input, job.spec.account
    key = f"job:{job.uid}:input"
    try:
        if source.storage_ref is not None:
            object_id = source.storage_ref.object_id
            obj = await svc.storage.json("GET", f"/v1/objects/{object_id}")
            if obj["account"] != account:
                raise StepFailed("InputNotYours", f"object {object_id} belongs to another account")
            obj = await svc.storage.json(
                "POST",
                f"/v1/objects/{object_id}/commit",
                key=idempotency_key(job.uid, "upload"),
                json={"jobId": job.uid},
            )
        elif source.url is not None:
            obj = await svc.storage.json(
                "POST",
                "/v1/ingest",
                timeout=cfg.call_timeout_seconds * 6,
                json={
                    "key": key,
                    "url": source.url,
                    "account": account,
                    "jobId": job.uid,
                    "state": "committed",
                },
            )
        else:
            assert source.inline is not None
            try:
                content = base64.b64decode(source.inline.data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise StepFailed("InputUndecodable", f"the inline image is not valid base64: {exc}") from exc
            obj = await svc.storage.json(
                "PUT",
                f"/v1/objects/{key}",
                content=content,
                params={"account": account, "jobId": job.uid, "state": "committed"},
            )
    except Refused as exc:
        reason = "StorageFull" if exc.status == 507 else "InputRefused"
        raise _refused(reason, exc) from exc
    return Done(
        f"input stored as {obj['id']} ({obj['width']}x{obj['height']} {obj['contentType']})",
        {"inputObjectId": obj["id"]},
    )


async def schedule(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    spec = job.spec
    body: dict[str, Any] = {
        "jobId": job.uid,
        "account": spec.account,
        "pipeline": spec.pipeline,
        "params": spec.parameters,
        "inputObjectId": job.ids()["inputObjectId"],
    }
    if spec.run_at is not None:
        body["runAt"] = iso(spec.run_at)
    try:
        task = await svc.ai.json("POST", "/v1/tasks", key=idempotency_key(job.uid, "schedule"), json=body)
    except Refused as exc:
        if exc.kind == "job-has-task":  # registered before under another key: it is ours
            task = await svc.ai.json("GET", f"/v1/tasks/{exc.body['taskId']}")
        else:
            raise _refused("SchedulingRefused", exc) from exc
    job.task = task
    when = (
        "as soon as a worker is free"
        if parse(task["runAt"]) <= job.now
        else f"at {iso(parse(task['runAt']))}"
    )
    return Done(f"task {task['id']} runs {when}", {"taskId": task["id"]})


async def process(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    task = job.task
    if task is None:
        items = (await svc.ai.json("POST", "/v1/tasks/query", json={"jobIds": [job.uid]}))["items"]
        task = job.task = items[0] if items else None
    if task is None:
        raise StepFailed("TaskMissing", "the AI service has no task for this job")
    state = task["state"]
    if state == "succeeded":
        result = await svc.storage.json("GET", f"/v1/objects/{task['resultObjectId']}")
        if result["state"] != "committed":
            raise StepFailed("ResultMissing", f"result {result['id']} is {result['state']}")
        return Done(
            f"result stored as {result['id']} ({result['width']}x{result['height']})",
            {"resultObjectId": result["id"]},
            reruns=int(task.get("reruns", 0)),
        )
    if state in ("failed", "cancelled"):
        raise StepFailed("ProcessingFailed", f"task {task['id']} {state}: {task.get('error') or ''}".strip())
    if state == "scheduled" and parse(task["runAt"]) > job.now:
        return Waiting("WaitingForRunAt", f"task {task['id']} runs at {iso(parse(task['runAt']))}")
    # One message for queued and running alike: a task starting is not worth a status write.
    return Waiting("Processing", f"task {task['id']} is queued or running on a GPU worker")


async def capture(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    hold_id = job.ids()["holdId"]
    try:
        hold = await svc.payment.json(
            "POST", f"/v1/holds/{hold_id}/capture", key=idempotency_key(job.uid, "capture")
        )
    except Refused as exc:
        raise _refused("CaptureRefused", exc) from exc
    # The capture time is the hold's, replayed identically on any retry: delivery derives its link
    # expiry from it, so every delivery attempt sends the same request.
    return Done(f"charged {hold['amount']} credits", {"capturedAt": hold["settledAt"]})


async def deliver(job: Job, svc: Services, cfg: OperatorSettings) -> Done | Waiting:
    ids = job.ids()
    result_id = ids["resultObjectId"]
    # The link's expiry is a function of the log (the capture time) so that every retry sends the
    # same request. If delivery is still being retried when that link would be close to expiry
    # (a long outage), it rolls forward by whole lifetimes, each period with a key of its own:
    # Main API records a job's delivery once, whatever the key.
    lifetime = dt.timedelta(seconds=cfg.download_link_seconds)
    period = 1
    while parse(ids["capturedAt"]) + period * lifetime <= job.now + min(lifetime / 2, dt.timedelta(hours=1)):
        period += 1
    expires = parse(ids["capturedAt"]) + period * lifetime
    link = await svc.storage.json(
        "POST", f"/v1/objects/{result_id}/download-url", json={"expiresAt": iso(expires)}
    )
    result = await svc.storage.json("GET", f"/v1/objects/{result_id}")
    body = {
        "jobUid": job.uid,
        "namespace": job.namespace,
        "name": job.name,
        "account": job.spec.account,
        "resultUrl": link["url"],
    }
    key = idempotency_key(job.uid, "deliver" if period == 1 else f"deliver:{period}")
    await svc.main.json("POST", "/v1/deliveries", key=key, json=body)
    return Done(
        "result delivered",
        {},
        result=JobResult(
            object_id=result_id,
            sha256=result["sha256"],
            size=result["size"],
            url=link["url"],
            url_expires_at=parse(link["expiresAt"]),
        ),
    )


DO: dict[str, StepFn] = {
    "charge": charge,
    "upload": upload,
    "schedule": schedule,
    "process": process,
    "capture": capture,
    "deliver": deliver,
}


# ------------------------------------------------------------------------------- compensation
async def cancel_task(job: Job, svc: Services) -> str:
    """Cancel the job's task and wait until it has stopped: a worker that is running it may still
    store a result before it hears of the cancellation, and the objects are deleted only after."""
    items = (await svc.ai.json("POST", "/v1/tasks/query", json={"jobIds": [job.uid]}))["items"]
    cancelled = []
    for task in items:
        if task["state"] in ("scheduled", "running") and not task["cancelRequested"]:
            task = await svc.ai.json(
                "POST", f"/v1/tasks/{task['id']}/cancel", key=idempotency_key(job.uid, "cancel-task")
            )
            cancelled.append(task["id"])
        if task["state"] == "running":
            raise Ambiguous("ai", f"task {task['id']} is cancelled but still running: waiting for its worker")
    return f"cancelled task {', '.join(cancelled)}" if cancelled else "no task to cancel"


async def delete_objects(job: Job, svc: Services) -> str:
    items = (await svc.storage.json("GET", f"/v1/jobs/{job.uid}/objects"))["items"]
    live = sorted(o["id"] for o in items if o["state"] != "deleted")
    if not live:
        return "no objects to delete"
    # The key covers the set being deleted: a result that appears later gets a call of its own.
    digest = hashlib.sha256(",".join(live).encode()).hexdigest()[:16]
    await svc.storage.json(
        "POST", f"/v1/jobs/{job.uid}/objects/delete", key=idempotency_key(job.uid, f"delete-objects:{digest}")
    )
    return f"deleted {', '.join(live)}"


async def release_holds(job: Job, svc: Services) -> str:
    holds = (await svc.payment.json("GET", f"/v1/jobs/{job.uid}/charges"))["holds"]
    released, kept = [], []
    for hold in holds:
        if hold["state"] == "captured":  # never silently: the auditor and the admin must see it
            kept.append(f"{hold['id']} ({hold['amount']}) was captured and stays charged")
        if hold["state"] == "active":
            await svc.payment.json(
                "POST",
                f"/v1/holds/{hold['id']}/release",
                key=idempotency_key(job.uid, f"release:{hold['id']}"),
            )
            released.append(f"{hold['id']} ({hold['amount']})")
    said = f"released {', '.join(released)}" if released else "no hold to release"
    return "; ".join([said, *kept])


UndoFn = Callable[[Job, Services], Awaitable[str]]
# In the order of core.COMPENSATIONS.
UNDO: dict[str, UndoFn] = {
    "cancel-task": cancel_task,
    "delete-objects": delete_objects,
    "release-holds": release_holds,
}
