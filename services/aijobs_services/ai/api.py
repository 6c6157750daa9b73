"""AI's HTTP API: tasks for the operator, leases for the workers."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool, StrictInt
from sqlalchemy.orm import Session

from aijobs.api.rules import ACCOUNT_NAME
from aijobs.api.v1alpha1 import PIPELINES
from aijobs_services.ai import queue
from aijobs_services.ai.models import Task
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import aware
from aijobs_services.kit.fields import Timestamp
from aijobs_services.kit.idempotency import IdempotentRequestDep

NAME = ACCOUNT_NAME
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
# A worker may have an identity of its own (``worker.<name>``, with its own secret) or share
# ``worker`` with the others; only an identity of its own proves who holds a lease.
Worker = Annotated[Caller, Depends(allow("worker", "worker.*"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api", "worker", "worker.*"))]


class TaskCreate(CamelModel):
    job_id: str = Field(min_length=1, max_length=128)
    account: str = Field(min_length=2, max_length=63, pattern=NAME)
    pipeline: str = Field(description=f"One of: {', '.join(PIPELINES)}")
    params: dict[str, Any] = Field(default_factory=dict)
    input_object_id: str = Field(min_length=1, max_length=40)
    run_at: Timestamp | None = None
    max_attempts: StrictInt = Field(default=5, ge=1, le=50)


class LeaseRequest(CamelModel):
    worker: str = Field(min_length=1, max_length=128)
    max_tasks: StrictInt = Field(default=1, ge=1, le=256)
    lease_seconds: StrictInt = Field(default=60, ge=5, le=3600)


class Heartbeat(CamelModel):
    lease_token: str
    lease_seconds: StrictInt = Field(default=60, ge=5, le=3600)


class Completion(CamelModel):
    lease_token: str
    result_object_id: str = Field(min_length=1, max_length=40)
    result: dict[str, Any] = Field(default_factory=dict)


class Failure(CamelModel):
    lease_token: str
    reason: str = Field(min_length=1, max_length=4000)
    retryable: StrictBool


class TaskQuery(CamelModel):
    job_ids: list[str] = Field(default_factory=list, max_length=5000)
    task_ids: list[str] = Field(default_factory=list, max_length=5000)


def public(task: Task, *, with_lease: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": task.id,
        "jobId": task.job_id,
        "account": task.account,
        "pipeline": task.pipeline,
        "params": task.params,
        "inputObjectId": task.input_object_id,
        "runAt": aware(task.run_at).isoformat(),
        "state": task.state,
        "attempts": task.attempts,
        "maxAttempts": task.max_attempts,
        "reruns": task.reruns,
        "cancelRequested": task.cancel_requested,
        "resultObjectId": task.result_object_id,
        "result": task.result,
        "error": task.error,
        "updatedAt": aware(task.updated_at).isoformat(),
    }
    if with_lease:
        doc["leaseToken"] = task.lease_token
        doc["leaseOwner"] = task.lease_owner
        doc["leaseExpiresAt"] = aware(task.lease_expires_at).isoformat() if task.lease_expires_at else None
    return doc


router = APIRouter(prefix="/v1", tags=["ai"])


@router.post("/tasks", status_code=201, summary="Register a job's task (one per job; idempotent)")
def create_task(
    body: TaskCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        task, created = queue.create(
            s,
            job_id=body.job_id,
            account=body.account,
            pipeline=body.pipeline,
            params=body.params,
            input_object_id=body.input_object_id,
            run_at=body.run_at,
            max_attempts=body.max_attempts,
        )
        return (201 if created else 200), public(task)

    return store.run(session, idem, act)


@router.get("/tasks/{task_id}", summary="One task")
def get_task(task_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        return public(queue.get(session, task_id))


@router.post("/tasks/query", summary="Many tasks' states in one call (by job ids or task ids)")
def query_tasks(body: TaskQuery, _: Reader, session: SessionDep) -> dict[str, Any]:
    conditions = []
    if body.job_ids:
        conditions.append(Task.job_id.in_(body.job_ids))
    if body.task_ids:
        conditions.append(Task.id.in_(body.task_ids))
    if not conditions:
        return {"items": []}
    with session.begin():
        return {"items": [public(t) for t in session.scalars(sa.select(Task).where(sa.or_(*conditions)))]}


@router.get("/queue/depth", summary="Tasks ready, running and scheduled later (for autoscalers)")
def queue_depth(session: SessionDep) -> dict[str, int]:
    # Open to any caller, like /metrics: an autoscaler (KEDA's metrics-api scaler) cannot mint
    # our short-lived signed tokens, and the answer is three counts, with no account, job or
    # task in it. It only reads.
    with session.begin():
        found = queue.depth(session)
    return {
        "ready": found.ready,
        "running": found.running,
        "scheduled": found.scheduled,
        "demand": found.demand,
    }


@router.post("/tasks/{task_id}/cancel", summary="Cancel a task (idempotent)")
def cancel_task(
    task_id: str, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, public(queue.cancel(s, task_id))))


@router.post("/leases", summary="Lease due tasks (idempotent by key: a retried lease returns the same tasks)")
def lease_tasks(
    body: LeaseRequest, caller: Worker, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    # The lease's owner comes from the token: a worker with an identity of its own can't lease
    # under another's name; under the shared identity the name is only a label, and says so.
    owner = caller.name if caller.name != "worker" else f"worker/{body.worker}"

    def act(s: Session) -> tuple[int, Any]:
        tasks = queue.lease(s, owner, body.max_tasks, body.lease_seconds)
        return 200, {"items": [public(t, with_lease=True) for t in tasks]}

    return store.run(session, idem, act)


@router.post("/tasks/{task_id}/heartbeat", summary="Extend a lease; tells the worker if it was cancelled")
def heartbeat(task_id: str, body: Heartbeat, _: Worker, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        task = queue.heartbeat(session, task_id, body.lease_token, body.lease_seconds)
        return public(task, with_lease=True)


@router.post("/tasks/{task_id}/complete", summary="Record a task's stored result (fenced; idempotent)")
def complete(
    task_id: str,
    body: Completion,
    _: Worker,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(
        session,
        idem,
        lambda s: (
            200,
            public(queue.complete(s, task_id, body.lease_token, body.result_object_id, body.result)),
        ),
    )


@router.post("/tasks/{task_id}/fail", summary="Report a failed run (fenced; retryable or not)")
def fail(
    task_id: str,
    body: Failure,
    _: Worker,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(
        session,
        idem,
        lambda s: (200, public(queue.fail(s, task_id, body.lease_token, body.reason, body.retryable))),
    )
