"""AI's contract: what the operator and the GPU workers send, what AI answers, which problem
means what.

A job has one task (``POST /v1/tasks``); workers lease due tasks (``POST /v1/leases``), keep the
lease with heartbeats and end it with a completion or a failure, each fenced by the lease token.
A batch job has one task per image, named by the job and the image's index (``item``).

A batch job is followed by counts rather than by its tasks (``POST /v1/tasks/counts``:
:class:`JobTaskCounts` per job), read page by page in the images' order (``GET
/v1/jobs/{jobId}/tasks``: :class:`TaskPage`) and cancelled whole (``POST
/v1/jobs/{jobId}/tasks/cancel``: :class:`JobTasksCancelled`, each task as its single cancel).

Bulk (:mod:`aijobs.api.bulk`): ``POST /v1/bulk/tasks`` carries many :class:`TaskCreate` (each the
single ``POST /v1/tasks`` under its own key), ``POST /v1/bulk/completions`` many
:class:`TaskCompletion` (each the single ``POST /v1/tasks/{taskId}/complete``, its body without
``taskId``, under its own key): one request and one transaction for many.
The life cycle itself is :mod:`aijobs.api.tasks`; the answers here are built from its values
(:meth:`Task.of`, :meth:`LeasedTask.of`) by the service and by the simulator's twin alike.

Problems (``type`` ends in the slug):

    404 unknown-task        no task by that id
    409 job-has-task        the job has a task with another definition (``taskId`` names it)
    409 lease-lost          the lease token is not the task's current one (``state`` says what it is)
    409 task-cancelled      a completion of a cancelled task: acknowledge with a failure
    422 unknown-pipeline    a pipeline AI does not run
    422 bad-parameters      parameters the pipeline does not take
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BeforeValidator, ConfigDict, Field, Strict, StrictBool

from aijobs.api import tasks
from aijobs.api.base import Answer, Request
from aijobs.api.fields import Instant, Int, Text, Timestamp, integral
from aijobs.api.pipelines import PARAMETERS
from aijobs.api.problem import ProblemKind, by_slug
from aijobs.api.rules import ACCOUNT_NAME
from aijobs.api.v1alpha1 import PIPELINES

__all__ = [
    "PROBLEMS",
    "Completion",
    "Failure",
    "Heartbeat",
    "JobTaskCounts",
    "JobTasksCancelled",
    "LeaseRequest",
    "LeasedTask",
    "Leases",
    "QueueDepth",
    "Task",
    "TaskCompletion",
    "TaskCounts",
    "TaskCountsQuery",
    "TaskCreate",
    "TaskList",
    "TaskPage",
    "TaskQuery",
    "page_position",
    "refusal",
]


# By the ``kind`` of the domain error (:mod:`aijobs.api.tasks`) that causes it.
PROBLEMS = by_slug(
    ProblemKind(404, "unknown-task", "Unknown task"),
    ProblemKind(409, "job-has-task", "The job already has a task"),
    ProblemKind(409, "lease-lost", "The lease is no longer yours"),
    ProblemKind(409, "task-cancelled", "The task was cancelled"),
    ProblemKind(422, "unknown-pipeline", "Invalid pipeline or parameters"),
    ProblemKind(422, "bad-parameters", "Invalid pipeline or parameters"),
)


def refusal(error: tasks.TaskError) -> tuple[ProblemKind, dict[str, Any]]:
    """The problem a refusal of the life cycle is answered with, and the members it adds
    (``taskId`` of the job's task, ``state`` of a task whose lease was lost)."""
    members: dict[str, Any] = {}
    if isinstance(error, tasks.JobHasTask):
        members["taskId"] = error.task_id
    elif isinstance(error, tasks.LeaseLost):
        members["state"] = error.state
    return PROBLEMS[error.kind], members


# ---------------------------------------------------------------------------------- requests
def _parameters_by_pipeline(schema: dict[str, Any]) -> None:
    """Each pipeline's parameters, in the schema: what a caller may send is one of them (the
    service checks the same with :func:`aijobs.api.pipelines.validate_parameters`)."""
    variants = []
    for name, model in PARAMETERS.items():
        params = model.model_json_schema()
        variant: dict[str, Any] = {"properties": {"pipeline": {"const": name}, "params": params}}
        if params.get("required"):
            variant["required"] = ["params"]
        variants.append(variant)
    schema["oneOf"] = variants


# The image's index in a batch job, as :data:`aijobs.api.fields.Int` reads it; the bounds come
# first because, behind its validator in a union, pydantic checks them but leaves them out of
# the schema (and a fuzzer then sends -1 as valid).
ImageIndex = Annotated[int, Ge(0), Le(999_999), Strict(), BeforeValidator(integral)]


class TaskCreate(Request):
    """A job's task, as the operator schedules it (idempotent: one task per job)."""

    model_config = ConfigDict(json_schema_extra=_parameters_by_pipeline)

    job_id: Text = Field(min_length=1, max_length=128)
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)
    # A plain string to pydantic, so that an unknown one is refused by the life cycle's own
    # ``unknown-pipeline`` naming the known ones; an enum to the schema's readers.
    pipeline: str = Field(description="The pipeline to run", json_schema_extra={"enum": list(PIPELINES)})
    params: dict[str, Any] = Field(default_factory=dict)
    input_object_id: Text = Field(min_length=1, max_length=40)
    run_at: Timestamp | None = Field(default=None, description="Default: now")
    max_attempts: Int = Field(default=5, ge=1, le=50)
    # Last, and absent unless set (``wire()`` drops a None): a single-image job's body is the
    # bytes it always was, so its idempotent replays keep matching across an upgrade.
    item: ImageIndex | None = Field(
        default=None,
        description="The image's index in a batch job (one task per job and item); absent: its one task",
    )


class LeaseRequest(Request):
    worker: Text = Field(min_length=1, max_length=128)
    max_tasks: Int = Field(default=1, ge=1, le=256)
    lease_seconds: Int = Field(default=60, ge=5, le=3600, description="How long the lease lasts")


class Heartbeat(Request):
    lease_token: Text
    lease_seconds: Int = Field(default=60, ge=5, le=3600, description="How long the lease lasts")


class Completion(Request):
    lease_token: Text
    result_object_id: Text = Field(min_length=1, max_length=40)
    result: dict[str, Any] = Field(default_factory=dict)


class TaskCompletion(Completion):
    """One item of ``POST /v1/bulk/completions``: the completion of task ``task_id``. The item
    stands for ``POST /v1/tasks/{taskId}/complete`` with the other fields as its body, and is
    fingerprinted as that single call (so the two replay each other under one key)."""

    task_id: Text = Field(min_length=1, max_length=40)


class Failure(Request):
    lease_token: Text
    reason: Text = Field(min_length=1, max_length=4000)
    retryable: StrictBool


class TaskQuery(Request):
    job_ids: list[Text] = Field(default_factory=list, max_length=5000)
    task_ids: list[Text] = Field(default_factory=list, max_length=5000)


class TaskCountsQuery(Request):
    """The jobs whose tasks to count (``POST /v1/tasks/counts``)."""

    job_ids: list[Text] = Field(
        min_length=1, max_length=1000, description="Answered in this order, a repeated one each time"
    )


# ----------------------------------------------------------------------------------- answers
class Task(Answer):
    """A task as the operator and Main API read it."""

    id: str
    job_id: str
    account: str
    pipeline: str
    params: dict[str, Any]
    input_object_id: str
    run_at: Instant
    state: tasks.State
    attempts: int
    max_attempts: int
    reruns: int = Field(description="Runs started again because a lease ran out without a result")
    cancel_requested: bool
    result_object_id: str | None
    result: dict[str, Any] | None
    error: str | None
    updated_at: Instant
    item: int | None = Field(default=None, description="The image's index in a batch job")

    @classmethod
    def fields_of(cls, task: tasks.Task) -> dict[str, Any]:
        d = task.definition
        return {
            "id": task.id,
            "job_id": task.job_id,
            "account": task.account,
            "pipeline": d.pipeline,
            "params": d.params,
            "input_object_id": d.input_object_id,
            "run_at": task.run_at,
            "state": task.state,
            "attempts": task.attempts,
            "max_attempts": task.max_attempts,
            "reruns": task.reruns,
            "cancel_requested": task.cancel_requested,
            "result_object_id": task.result_object_id,
            "result": task.result,
            "error": task.error,
            "updated_at": task.updated_at,
            "item": task.item,
        }

    @classmethod
    def of(cls, task: tasks.Task) -> Task:
        return cls(**cls.fields_of(task))


class LeasedTask(Task):
    """A task as its worker reads it: with the lease that fences its calls (none once ended)."""

    lease_token: str | None
    lease_owner: str | None = Field(
        description="The worker's identity, or `worker/<name>` under the shared one"
    )
    lease_expires_at: Instant | None

    @classmethod
    def of(cls, task: tasks.Task) -> LeasedTask:
        held = task.lease
        return cls(
            **cls.fields_of(task),
            lease_token=held.token if held else None,
            lease_owner=held.owner if held else None,
            lease_expires_at=held.expires_at if held else None,
        )


class TaskList(Answer):
    items: list[Task]


class Leases(Answer):
    """The tasks a lease handed out (none when nothing is due)."""

    items: list[LeasedTask]


class QueueDepth(Answer):
    """How much work the queue holds, as an autoscaler reads it."""

    ready: int = Field(description="Due and waiting for a lease (a running task whose lease ran out too)")
    running: int = Field(description="Held by a live lease")
    scheduled: int = Field(description="Waiting for a later run-at")
    demand: int = Field(description="What workers must serve now: ready + running")

    @classmethod
    def count(cls, standings: list[tasks.Standing]) -> QueueDepth:
        ready, running = standings.count("ready"), standings.count("running")
        return cls(
            ready=ready, running=running, scheduled=standings.count("scheduled"), demand=ready + running
        )


def page_position(item: int | None) -> int:
    """Where a task stands in its job's pages (:class:`TaskPage`): its image's index, a
    single-image job's one task (no item) first, as -1 (the service's unique index says the same:
    ``coalesce(item, -1)``)."""
    return -1 if item is None else item


class TaskPage(Answer):
    """A page of a job's tasks, in the order of their images (``GET /v1/jobs/{jobId}/tasks``)."""

    job_id: str
    items: list[Task]
    next: int | None = Field(
        description="The `after` that reads the next page (the last item's index); null on the last page"
    )


class JobTaskCounts(Answer):
    """How many of a job's tasks are in each state: what follows a batch without reading its
    tasks. A running task whose cancellation was asked counts as running until its worker stops."""

    job_id: str
    total: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    updated_at: Instant | None = Field(
        description="The latest change to any of the job's tasks; null with none"
    )

    @classmethod
    def of(cls, job_id: str, by_state: Mapping[str, int], updated_at: dt.datetime | None) -> JobTaskCounts:
        """The counts from the number of tasks in each state (a state not there: none)."""
        counted = {
            state: by_state.get(state, 0)
            for state in ("scheduled", "running", "succeeded", "failed", "cancelled")
        }
        return cls(job_id=job_id, total=sum(counted.values()), updated_at=updated_at, **counted)

    @classmethod
    def count(cls, job_id: str, job_tasks: Iterable[tasks.Task]) -> JobTaskCounts:
        """The counts of these tasks (the job's)."""
        by_state: dict[str, int] = {}
        latest: dt.datetime | None = None
        for task in job_tasks:
            by_state[task.state] = by_state.get(task.state, 0) + 1
            latest = task.updated_at if latest is None else max(latest, task.updated_at)
        return cls.of(job_id, by_state, latest)


class TaskCounts(Answer):
    """One :class:`JobTaskCounts` per job asked, in the order asked; a job AI knows nothing of
    has zeros."""

    items: list[JobTaskCounts]


class JobTasksCancelled(Answer):
    """What cancelling a job's tasks did: each scheduled or running task as its single cancel
    (:func:`aijobs.api.tasks.cancel`), the others left as they are."""

    job_id: str
    cancelled: int = Field(description="Scheduled tasks this call cancelled")
    stopping: int = Field(description="Running tasks this call asked to stop (their workers end them)")
    counts: JobTaskCounts = Field(description="The job's counts right after")
