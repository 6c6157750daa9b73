"""What each saga step does, and what compensation undoes, against the services.

Every call carries an Idempotency-Key derived from the job's uid and the step's name, so a retry
after a timeout, a restart of the operator or a duplicate event never acts twice. A step (and a
compensation) is given a :class:`Call` and returns :class:`~aijobs_operator.core.Done` or
:class:`~aijobs_operator.core.Waiting`, raises :class:`StepFailed` for a definite no, and lets
:class:`~aijobs.wire.client.Ambiguous` through for the engine to retry. Steps never write the saga
log, nor anything else: what they learned (ids, the result, the AI task) travels back in their
outcome, and what they send is built from the log alone (see :mod:`aijobs_operator.core`). Which
step runs when, and what undoes it, is the table in :mod:`aijobs_operator.saga`.

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
from typing import TypeVar

from pydantic import BaseModel

from aijobs.api import ai, auth, main, payment, storage
from aijobs.api.base import Request
from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, JobResult
from aijobs.wire.client import Refused, ServiceClient
from aijobs_operator.config import OperatorSettings
from aijobs_operator.core import Done, Ended, Policy, Waiting, hold_expiry, idempotency_key, iso, parse

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Services:
    auth: ServiceClient
    payment: ServiceClient
    storage: ServiceClient
    ai: ServiceClient
    main: ServiceClient


@dataclass(frozen=True)
class Job:
    """What a step may read: the job's identity, its order, its saga log, the time of this pass,
    and the AI task as the bulk follower last saw it."""

    uid: str
    namespace: str
    name: str
    spec: AIImageJobSpec
    status: AIImageJobStatus
    policy: Policy
    now: dt.datetime
    task: ai.Task | None = None
    created: dt.datetime | None = None  # the job's creationTimestamp (a batch's set is frozen at it)
    counts: ai.JobTaskCounts | None = None  # a batch's task counts, as the follower last read them
    ended: Ended | None = None  # what a batch's images came to, as its process step read them

    def ids(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for rec in self.status.steps:
            merged.update(rec.remote_ids)
        return merged


StepFn = Callable[["Call"], Awaitable[Done | Waiting]]


def by_input(single: StepFn, many: StepFn) -> StepFn:
    """A step (or compensation) that runs ``many`` for a batch job, ``single`` otherwise."""

    async def run(call: Call) -> Done | Waiting:
        return await (many if call.job.spec.is_batch else single)(call)

    run.__name__ = run.__qualname__ = single.__name__
    return run


class StepFailed(Exception):
    """A definite failure: compensate now. ``reason`` is CamelCase, for conditions and events."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Call:
    """What one step or compensation is given: the job, the services, the operator's settings."""

    job: Job
    svc: Services
    cfg: OperatorSettings


def same_bytes(body: Request, **times: dt.datetime | None) -> dict[str, object]:
    """The body to send, its times written as every release of the operator has written them
    (whole seconds, ``Z``): a retry under a key sent before an upgrade must send the very same
    bytes, or the service refuses the replay as a reused key."""
    return body.wire() | {name: iso(value) for name, value in times.items() if value is not None}


async def bulk_call(
    client: ServiceClient,
    into: type[M],
    single: str,
    bulk: str,
    key: str,
    body: dict[str, object] | None,
    item: dict[str, object] | None = None,
) -> M:
    """One keyed call, sent with every other job's call to the same route that is waiting at the
    time (:mod:`aijobs.wire.bulk`): ``body`` is what the single route ``single`` takes (None:
    no body), ``item`` the bulk item's request where it differs (the route's path parameters)."""
    return await client.bulk(bulk, into).call(
        key,
        item if item is not None else (body or {}),
        lambda: client.fetch(into, "POST", single, key=key, json=body),
    )


def refused(reason: str, exc: Refused) -> StepFailed:
    return StepFailed(reason, f"{exc.service} refused: {exc.detail or exc.kind}")


async def authorize(call: Call) -> None:
    """Auth says the job's namespace may charge its account, or the charge is refused
    (``TenantNotAllowed``): the first thing a charge does, for one image or a batch."""
    job = call.job
    try:
        await call.svc.auth.fetch(
            auth.ChargeAuthorized,
            "POST",
            "/v1/authorize-charge",
            json=auth.BindingRequest(namespace=job.namespace, account=job.spec.account).wire(),
        )
    except Refused as exc:
        raise refused("TenantNotAllowed", exc) from exc


async def charge(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    spec = job.spec
    await authorize(call)
    # The expiry comes from the log (the deadline fixed at acceptance), never from the clock: a
    # retry under the same key must send the same body.
    expires = hold_expiry(job.status, job.policy)
    body = payment.HoldCreate(account=spec.account, job_id=job.uid, amount=spec.price, expires_at=expires)
    try:
        hold = await bulk_call(
            svc.payment,
            payment.Hold,
            "/v1/holds",
            "/v1/bulk/holds",
            idempotency_key(job.uid, "charge"),
            same_bytes(body, expiresAt=expires),
        )
    except Refused as exc:
        reason = "InsufficientCredits" if exc.status == 402 else "ChargeRefused"
        raise refused(reason, exc) from exc
    return Done(f"held {spec.price} credits (hold {hold.id})", {"holdId": hold.id})


async def upload(call: Call) -> Done | Waiting:
    job, svc, cfg = call.job, call.svc, call.cfg
    source, account = job.spec.input, job.spec.account
    key = f"job:{job.uid}:input"
    try:
        if source.storage_ref is not None:
            object_id = source.storage_ref.object_id
            obj = await svc.storage.fetch(storage.StoredObject, "GET", f"/v1/objects/{object_id}")
            if obj.account != account:
                raise StepFailed("InputNotYours", f"object {object_id} belongs to another account")
            if obj.kind != "input":  # a result, a manifest or an image list is not an upload
                what = f"object {object_id} is a {obj.kind}, not an uploaded image"
                raise StepFailed("InputNotAnImage", what)
            obj = await svc.storage.fetch(
                storage.StoredObject,
                "POST",
                f"/v1/objects/{object_id}/commit",
                key=idempotency_key(job.uid, "upload"),
                json=storage.CommitRequest(job_id=job.uid).wire(),
            )
        elif source.url is not None:
            ingest = storage.IngestRequest(
                key=key, url=source.url, account=account, job_id=job.uid, state="committed"
            )
            obj = await svc.storage.fetch(
                storage.StoredObject,
                "POST",
                "/v1/ingest",
                timeout=cfg.call_timeout_seconds * 6,
                json=ingest.wire(),
            )
        else:
            assert source.inline is not None
            try:
                content = base64.b64decode(source.inline.data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise StepFailed("InputUndecodable", f"the inline image is not valid base64: {exc}") from exc
            obj = await svc.storage.fetch(
                storage.StoredObject,
                "PUT",
                f"/v1/objects/{key}",
                content=content,
                params={"account": account, "jobId": job.uid, "state": "committed"},
            )
    except Refused as exc:
        reason = "StorageFull" if exc.status == 507 else "InputRefused"
        raise refused(reason, exc) from exc
    return Done(
        f"input stored as {obj.id} ({obj.width}x{obj.height} {obj.content_type})",
        {"inputObjectId": obj.id},
    )


async def schedule(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    spec = job.spec
    body = ai.TaskCreate(
        job_id=job.uid,
        account=spec.account,
        pipeline=spec.pipeline,
        params=spec.parameters,
        input_object_id=job.ids()["inputObjectId"],
        run_at=spec.run_at,
    )
    try:
        task = await bulk_call(
            svc.ai,
            ai.Task,
            "/v1/tasks",
            "/v1/bulk/tasks",
            idempotency_key(job.uid, "schedule"),
            same_bytes(body, runAt=spec.run_at),
        )
    except Refused as exc:
        if exc.kind == "job-has-task":  # registered before under another key: it is ours
            task = await svc.ai.fetch(ai.Task, "GET", f"/v1/tasks/{exc.body['taskId']}")
        else:
            raise refused("SchedulingRefused", exc) from exc
    when = "as soon as a worker is free" if task.run_at <= job.now else f"at {iso(task.run_at)}"
    return Done(f"task {task.id} runs {when}", {"taskId": task.id}, task=task)


async def process(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    task = job.task
    if task is None:
        found = await svc.ai.fetch(
            ai.TaskList, "POST", "/v1/tasks/query", json=ai.TaskQuery(job_ids=[job.uid]).wire()
        )
        task = found.items[0] if found.items else None
    if task is None:
        raise StepFailed("TaskMissing", "the AI service has no task for this job")
    state = task.state
    if state == "succeeded":
        if task.result_object_id is None:
            raise StepFailed("ResultMissing", f"task {task.id} succeeded without naming its result")
        result = await svc.storage.fetch(storage.StoredObject, "GET", f"/v1/objects/{task.result_object_id}")
        if result.state != "committed":
            raise StepFailed("ResultMissing", f"result {result.id} is {result.state}")
        return Done(
            f"result stored as {result.id} ({result.width}x{result.height})",
            # What delivery tells the user of the result, kept so it need not ask Storage again.
            {"resultObjectId": result.id, "resultSha256": result.sha256, "resultSize": str(result.size)},
            reruns=task.reruns,
            task=task,
        )
    if state in ("failed", "cancelled"):
        raise StepFailed("ProcessingFailed", f"task {task.id} {state}: {task.error or ''}".strip())
    if state == "scheduled" and task.run_at > job.now:
        return Waiting("WaitingForRunAt", f"task {task.id} runs at {iso(task.run_at)}", task=task)
    # One message for queued and running alike: a task starting is not worth a status write.
    return Waiting("Processing", f"task {task.id} is queued or running on a GPU worker", task=task)


async def capture(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    hold_id = job.ids()["holdId"]
    try:
        hold = await bulk_call(
            svc.payment,
            payment.Hold,
            f"/v1/holds/{hold_id}/capture",
            "/v1/bulk/captures",
            idempotency_key(job.uid, "capture"),
            None,
            {"holdId": hold_id},
        )
    except Refused as exc:
        raise refused("CaptureRefused", exc) from exc
    if hold.settled_at is None:
        raise Refused("payment", 200, "contract-violation", f"captured hold {hold.id} has no settledAt", {})
    # The capture time is the hold's, replayed identically on any retry: delivery derives its link
    # expiry from it, so every delivery attempt sends the same request.
    return Done(f"charged {hold.amount} credits", {"capturedAt": hold.settled_at.isoformat()})


async def deliver(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    ids = job.ids()
    result_id = ids["resultObjectId"]
    if "resultSha256" in ids:
        sha256, size = ids["resultSha256"], int(ids["resultSize"])
    else:  # a log written by a release that did not keep them
        result = await svc.storage.fetch(storage.StoredObject, "GET", f"/v1/objects/{result_id}")
        sha256, size = result.sha256, result.size
    return Done("result delivered", {}, result=await record_delivery(call, result_id, sha256, size))


async def record_delivery(call: Call, object_id: str, sha256: str, size: int) -> JobResult:
    """A signed link to the delivered object (a single job's result, a batch's manifest), recorded
    with Main API once; what the job's ``status.result`` says."""
    job, svc, cfg = call.job, call.svc, call.cfg
    ids = job.ids()
    # The link's expiry is a function of the log (the capture time) so that every retry sends the
    # same request. If delivery is still being retried when that link would be close to expiry
    # (a long outage), it rolls forward by whole lifetimes, each period with a key of its own:
    # Main API records a job's delivery once, whatever the key.
    lifetime = dt.timedelta(seconds=cfg.download_link_seconds)
    period = 1
    while parse(ids["capturedAt"]) + period * lifetime <= job.now + min(lifetime / 2, dt.timedelta(hours=1)):
        period += 1
    expires = parse(ids["capturedAt"]) + period * lifetime
    link = await svc.storage.fetch(
        storage.DownloadLink,
        "POST",
        f"/v1/objects/{object_id}/download-url",
        json=same_bytes(storage.DownloadLinkRequest(expires_at=expires), expiresAt=expires),
    )
    body = main.DeliveryCreate(
        job_uid=job.uid,
        namespace=job.namespace,
        name=job.name,
        account=job.spec.account,
        result_url=link.url,
    )
    key = idempotency_key(job.uid, "deliver" if period == 1 else f"deliver:{period}")
    await svc.main.fetch(main.DeliveryRecorded, "POST", "/v1/deliveries", key=key, json=body.wire())
    return JobResult(
        object_id=object_id, sha256=sha256, size=size, url=link.url, url_expires_at=link.expires_at
    )


# ------------------------------------------------------------------------------- compensation
async def cancel_task(call: Call) -> Done | Waiting:
    """Cancel the job's task and wait until it has stopped: a worker that is running it may still
    store a result before it hears of the cancellation, and the objects are deleted only after."""
    job, svc = call.job, call.svc
    found = await svc.ai.fetch(
        ai.TaskList, "POST", "/v1/tasks/query", json=ai.TaskQuery(job_ids=[job.uid]).wire()
    )
    cancelled = []
    for task in found.items:
        if task.state in ("scheduled", "running") and not task.cancel_requested:
            task = await svc.ai.fetch(
                ai.Task, "POST", f"/v1/tasks/{task.id}/cancel", key=idempotency_key(job.uid, "cancel-task")
            )
            cancelled.append(task.id)
        if task.state == "running":
            return Waiting("TaskStopping", f"task {task.id} is cancelled, its worker has not stopped yet")
    return Done(f"cancelled task {', '.join(cancelled)}" if cancelled else "no task to cancel")


async def delete_objects(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    objects = await svc.storage.fetch(storage.JobObjects, "GET", f"/v1/jobs/{job.uid}/objects")
    live = sorted(o.id for o in objects.items if o.state != "deleted")
    if not live:
        return Done("no objects to delete")
    # The key covers the set being deleted: a result that appears later gets a call of its own.
    digest = hashlib.sha256(",".join(live).encode()).hexdigest()[:16]
    await svc.storage.fetch(
        storage.DeletedObjects,
        "POST",
        f"/v1/jobs/{job.uid}/objects/delete",
        key=idempotency_key(job.uid, f"delete-objects:{digest}"),
    )
    shown = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
    return Done(f"deleted {len(live)} objects: {shown}" if len(live) > 1 else f"deleted {shown}")


async def release_holds(call: Call) -> Done | Waiting:
    job, svc = call.job, call.svc
    charges = await svc.payment.fetch(payment.Charges, "GET", f"/v1/jobs/{job.uid}/charges")
    released, kept = [], []
    for hold in charges.holds:
        if hold.state == "captured":  # never silently: the auditor and the admin must see it
            kept.append(f"{hold.id} ({hold.amount}) was captured and stays charged")
        if hold.state == "active":
            await svc.payment.fetch(
                payment.Hold,
                "POST",
                f"/v1/holds/{hold.id}/release",
                key=idempotency_key(job.uid, f"release:{hold.id}"),
            )
            released.append(f"{hold.id} ({hold.amount})")
    said = f"released {', '.join(released)}" if released else "no hold to release"
    return Done("; ".join([said, *kept]))
