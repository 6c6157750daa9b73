"""AI's HTTP API: tasks for the operator, leases for the workers.

The routes read the wire models of :mod:`aijobs.api.ai`, call :mod:`aijobs_services.ai.queue`
and answer the same models; a refusal of the task life cycle (:mod:`aijobs.api.tasks`) becomes
its problem here, the one place that knows HTTP statuses. The bulk routes run many of the single
routes' operations, each under its own key, in one request and one transaction
(:mod:`aijobs_services.ai.bulk`). A batch job's routes (counts, pages, cancel) act on all of a
job's tasks in a few statements, however many images it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from aijobs.api import tasks
from aijobs.api.ai import (
    PROBLEMS,
    Completion,
    Failure,
    Heartbeat,
    JobTasksCancelled,
    LeasedTask,
    LeaseRequest,
    Leases,
    QueueDepth,
    Task,
    TaskCompletion,
    TaskCounts,
    TaskCountsQuery,
    TaskCreate,
    TaskList,
    TaskPage,
    TaskQuery,
    refusal,
)
from aijobs.api.bulk import BulkAnswer, BulkRequest, item_body
from aijobs_services.ai import bulk, queue
from aijobs_services.kit.app import IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.fields import NO_NUL
from aijobs_services.kit.idempotency import (
    BulkOp,
    IdempotencyStore,
    IdempotentRequest,
    IdempotentRequestDep,
    Outcome,
    Quick,
    item_request,
)
from aijobs_services.kit.problems import Problem, documented, read_item

Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
# A worker may have an identity of its own (``worker.<name>``, with its own secret) or share
# ``worker`` with the others; only an identity of its own proves who holds a lease.
Worker = Annotated[Caller, Depends(allow("worker", "worker.*"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api", "worker", "worker.*"))]
TaskId = Annotated[str, Path(pattern=NO_NUL, description="A task's id, as its creation answered")]
JobId = Annotated[str, Path(pattern=NO_NUL, description="The job whose tasks these are")]


@contextmanager
def _refusals() -> Iterator[None]:
    """The life cycle's refusals as their problems (raised inside an idempotent action, so that
    a refusal is stored and replayed like any answer)."""
    try:
        yield
    except tasks.TaskError as error:
        known, members = refusal(error)
        raise Problem(
            str(error), status=known.status, slug=known.slug, title=known.title, **members
        ) from error


def _answers(*slugs: str) -> dict[int | str, dict[str, Any]]:
    """The route's own problems, documented (the kit adds what it answers on every route:
    credentials, validation, the Idempotency-Key's problems)."""
    return documented(*((PROBLEMS[s].status, s, PROBLEMS[s].title) for s in slugs))


def _once(action: Callable[[Session], tasks.Task]) -> Callable[[Session], Outcome]:
    """An idempotent action on one task, answering it as it is after (or the refusal)."""

    def act(session: Session) -> Outcome:
        with _refusals():
            return 200, Task.of(action(session))

    return act


# A job scheduled again with the same definition: its task as it is, not a new one.
_REGISTERED_BEFORE: dict[int | str, dict[str, Any]] = {
    200: {"model": Task, "description": "The job's task, registered earlier with the same definition"}
}

router = APIRouter(prefix="/v1", tags=["ai"])


@router.post(
    "/tasks",
    status_code=201,
    summary="Register a job's task (one per job; idempotent)",
    response_model=Task,
    responses=_REGISTERED_BEFORE | _answers("job-has-task", "unknown-pipeline", "bad-parameters"),
)
def create_task(
    body: TaskCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, _creation(body), quick=_quick_creation(store, idem, body))


def _quick_creation(store: IdempotencyStore, req: IdempotentRequest, body: TaskCreate) -> Quick | None:
    return queue.quick_create(
        store.claim_row(req),
        lambda task: bulk.wire(Task.of(task)),
        job_id=body.job_id,
        account=body.account,
        pipeline=body.pipeline,
        params=body.params,
        input_object_id=body.input_object_id,
        run_at=body.run_at,
        max_attempts=body.max_attempts,
        item=body.item,
    )


def _creation(body: TaskCreate) -> Callable[[Session], Outcome]:
    """Register the task ``body`` defines: 201 when new, 200 with the one registered before."""

    def act(s: Session) -> Outcome:
        with _refusals():
            task, created = queue.create(
                s,
                job_id=body.job_id,
                account=body.account,
                pipeline=body.pipeline,
                params=body.params,
                input_object_id=body.input_object_id,
                run_at=body.run_at,
                max_attempts=body.max_attempts,
                item=body.item,
            )
        return (201 if created else 200), Task.of(task)

    return act


@router.post(
    "/bulk/tasks",
    summary="Register many tasks in one request (each item is POST /v1/tasks under its own key)",
    response_model=BulkAnswer,
    responses=_answers(),
)
def create_tasks(
    body: BulkRequest[dict[str, Any]], caller: Operator, store: IdemStoreDep, session: SessionDep
) -> BulkAnswer:
    ops = []
    for item in body.items:
        sent = read_item(TaskCreate, item.request)
        if isinstance(sent, Problem):
            ops.append(BulkOp(item.key, "/v1/tasks", refusal=sent))
            continue
        req = item_request(caller.name, item.key, "POST", "/v1/tasks", "/v1/tasks", item_body(item.request))
        quick = _quick_creation(store, req, sent)
        ops.append(BulkOp(item.key, "/v1/tasks", req, _creation(sent), quick=quick))
    return store.bulk(session, ops)


@router.get("/tasks/{task_id}", summary="One task", response_model=Task, responses=_answers("unknown-task"))
def get_task(task_id: TaskId, _: Reader, session: SessionDep) -> Task:
    with _refusals(), session.begin():
        return Task.of(queue.get(session, task_id))


@router.post(
    "/tasks/query", summary="Many tasks' states in one call (by job ids or task ids)", response_model=TaskList
)
def query_tasks(body: TaskQuery, _: Reader, session: SessionDep) -> TaskList:
    with session.begin():
        return TaskList(items=[Task.of(t) for t in queue.query(session, body.job_ids, body.task_ids)])


@router.post(
    "/tasks/counts",
    summary="How many of each job's tasks are in each state (for following batches)",
    response_model=TaskCounts,
)
def count_tasks(body: TaskCountsQuery, _: Reader, session: SessionDep) -> TaskCounts:
    with session.begin():
        return TaskCounts(items=queue.counts(session, body.job_ids))


@router.get(
    "/jobs/{job_id}/tasks",
    summary="A job's tasks, page by page in the order of their images",
    response_model=TaskPage,
)
def job_tasks(
    job_id: JobId,
    _: Reader,
    session: SessionDep,
    after: Annotated[
        int | None,
        Query(ge=-1, le=999_999, description="Only tasks of images past this index (a page's next)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> TaskPage:
    with session.begin():
        found, following = queue.page(session, job_id, after, limit)
    return TaskPage(job_id=job_id, items=found, next=following)


@router.post(
    "/jobs/{job_id}/tasks/cancel",
    summary="Cancel each of a job's tasks as its single cancel does (idempotent)",
    response_model=JobTasksCancelled,
    responses=_answers(),
)
def cancel_job_tasks(
    job_id: JobId, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, queue.cancel_job(s, job_id)))


@router.get(
    "/queue/depth",
    summary="Tasks ready, running and scheduled later (for autoscalers)",
    response_model=QueueDepth,
)
def queue_depth(session: SessionDep) -> QueueDepth:
    # Open to any caller, like /metrics: an autoscaler (KEDA's metrics-api scaler) cannot mint
    # our short-lived signed tokens, and the answer is three counts, with no account, job or
    # task in it. It only reads.
    with session.begin():
        return queue.depth(session)


@router.post(
    "/tasks/{task_id}/cancel",
    summary="Cancel a task (idempotent)",
    response_model=Task,
    responses=_answers("unknown-task"),
)
def cancel_task(
    task_id: TaskId, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, _once(lambda s: queue.cancel(s, task_id)))


@router.post(
    "/leases",
    summary="Lease due tasks (idempotent by key: a retried lease returns the same tasks)",
    response_model=Leases,
    responses=_answers(),
)
def lease_tasks(
    body: LeaseRequest, caller: Worker, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    # The lease's owner comes from the token: a worker with an identity of its own can't lease
    # under another's name; under the shared identity the name is only a label, and says so.
    owner = caller.name if caller.name != "worker" else f"worker/{body.worker}"

    def act(s: Session) -> Outcome:
        leased = queue.lease(s, owner, body.max_tasks, body.lease_seconds)
        return 200, Leases(items=[LeasedTask.of(t) for t in leased])

    return store.run(session, idem, act)


@router.post(
    "/tasks/{task_id}/heartbeat",
    summary="Extend a lease; tells the worker if it was cancelled",
    response_model=LeasedTask,
    responses=_answers("unknown-task", "lease-lost"),
)
def heartbeat(task_id: TaskId, body: Heartbeat, _: Worker, session: SessionDep) -> LeasedTask:
    with _refusals(), session.begin():
        return LeasedTask.of(queue.heartbeat(session, task_id, body.lease_token, body.lease_seconds))


@router.post(
    "/tasks/{task_id}/complete",
    summary="Record a task's stored result (fenced; idempotent)",
    response_model=Task,
    responses=_answers("unknown-task", "lease-lost", "task-cancelled"),
)
def complete(
    task_id: TaskId,
    body: Completion,
    _: Worker,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(
        session, idem, _completion(task_id, body), quick=_quick_completion(store, idem, task_id, body)
    )


def _quick_completion(
    store: IdempotencyStore, req: IdempotentRequest, task_id: str, body: Completion
) -> Quick:
    return queue.quick_complete(
        store.claim_row(req), task_id, body.lease_token, body.result_object_id, body.result
    )


def _completion(task_id: str, body: Completion) -> Callable[[Session], Outcome]:
    return _once(lambda s: queue.complete(s, task_id, body.lease_token, body.result_object_id, body.result))


_COMPLETE = "/v1/tasks/{task_id}/complete"


@router.post(
    "/bulk/completions",
    summary="Record many tasks' results in one request (each item is its task's /complete under its own key)",
    response_model=BulkAnswer,
    responses=_answers(),
)
def complete_many(
    body: BulkRequest[dict[str, Any]], caller: Worker, store: IdemStoreDep, session: SessionDep
) -> BulkAnswer:
    ops = []
    for item in body.items:
        # The item stands for the single call on its task, whose body is the item less taskId:
        # fingerprinted as that call, so the two replay each other under one key.
        named = item.request.get("taskId")
        path = _COMPLETE.format(task_id=named if isinstance(named, str) else "")
        sent = read_item(TaskCompletion, item.request)
        if isinstance(sent, Problem):
            ops.append(BulkOp(item.key, path, refusal=sent))
            continue
        single = {k: v for k, v in item.request.items() if k != "taskId"}
        req = item_request(caller.name, item.key, "POST", path, _COMPLETE, item_body(single))
        quick = _quick_completion(store, req, sent.task_id, sent)
        ops.append(BulkOp(item.key, path, req, _completion(sent.task_id, sent), quick=quick))
    return store.bulk(session, ops)


@router.post(
    "/tasks/{task_id}/fail",
    summary="Report a failed run (fenced; retryable or not)",
    response_model=Task,
    responses=_answers("unknown-task", "lease-lost"),
)
def fail(
    task_id: TaskId,
    body: Failure,
    _: Worker,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(
        session, idem, _once(lambda s: queue.fail(s, task_id, body.lease_token, body.reason, body.retryable))
    )
