"""An AI task's life cycle as a pure state machine: what the AI service does to a task, and what
the simulator's AI twin does, so that the two cannot drift.

    scheduled ──lease──▶ running ──complete──▶ succeeded
        ▲                  │ │
        └──retryable fail──┘ └──fail / out of attempts──▶ failed
    scheduled ──cancel──▶ cancelled          running ──cancel──▶ (cancel requested) ──fail──▶ cancelled

A job has one task, or, for a batch, one per image: a task is named by its job and its ``item``
(the image's index; none for a single-image job), and that pair is unique.

A running task holds a :class:`Lease`: a token and an expiry. Only the holder of the current
token may heartbeat, complete or fail it (fencing), so a worker that stalled past its lease and
was replaced is refused without harm. A lease that ran out makes the task due again: the next
lease counts the attempt and the re-run.

Every function takes the task and the time and returns the task as it is after the event; ids,
tokens and the clock come from the caller (the service's SQL edge or the twin). Refusals are
domain errors, with no HTTP status:

    TaskError
    ├── UnknownTask        no task by that id (raised by the stores, named here for one mapping)
    ├── InvalidDefinition  an unknown pipeline, or parameters it does not take (``kind`` says which)
    ├── JobHasTask         the job (or the job's image) already has a task with another definition
    ├── LeaseLost          the token is not the running task's current one (``state``)
    └── TaskCancelled      a completion of a task whose cancellation was asked
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from aijobs.api.pipelines import PipelineError, validate_parameters

__all__ = [
    "TERMINAL",
    "Definition",
    "InvalidDefinition",
    "JobHasTask",
    "Lease",
    "LeaseLost",
    "Standing",
    "State",
    "Task",
    "TaskCancelled",
    "TaskError",
    "UnknownTask",
    "backoff",
    "cancel",
    "complete",
    "create",
    "defined",
    "fail",
    "heartbeat",
    "is_due",
    "lease",
    "reuse",
    "settle_expired",
    "standing",
]

State = Literal["scheduled", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[State] = frozenset({"succeeded", "failed", "cancelled"})
Standing = Literal["ready", "running", "scheduled"]


class TaskError(Exception):
    """A task event the life cycle refuses; ``kind`` is the slug its problem carries."""

    kind = "task-error"


class UnknownTask(TaskError):
    kind = "unknown-task"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class InvalidDefinition(TaskError):
    def __init__(self, message: str, kind: Literal["unknown-pipeline", "bad-parameters"]) -> None:
        super().__init__(message)
        self.kind = kind


class JobHasTask(TaskError):
    kind = "job-has-task"

    def __init__(self, job_id: str, task_id: str, item: int | None = None) -> None:
        what = f"job {job_id}" if item is None else f"image {item} of job {job_id}"
        super().__init__(f"{what} already has task {task_id} with another definition")
        self.task_id = task_id


class LeaseLost(TaskError):
    kind = "lease-lost"

    def __init__(self, message: str, state: State) -> None:
        super().__init__(message)
        self.state = state


class TaskCancelled(TaskError):
    kind = "task-cancelled"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled; its result is not wanted")


@dataclass(frozen=True)
class Definition:
    """What a job asks its task to do; scheduling a job twice with one definition is a replay."""

    pipeline: str
    params: dict[str, Any]
    input_object_id: str


@dataclass(frozen=True)
class Lease:
    token: str
    owner: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Task:
    id: str
    job_id: str
    account: str
    definition: Definition
    run_at: dt.datetime
    updated_at: dt.datetime
    max_attempts: int = 5
    state: State = "scheduled"
    attempts: int = 0
    reruns: int = 0  # runs started again because an earlier lease ran out without a result
    cancel_requested: bool = False
    lease: Lease | None = None
    result_object_id: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    item: int | None = None  # the image's index in a batch job; none: the job's one task


def defined(pipeline: str, params: dict[str, Any], input_object_id: str) -> Definition:
    """The definition with its parameters checked against the pipeline's schema (and completed
    with its defaults), or :class:`InvalidDefinition`."""
    try:
        checked = validate_parameters(pipeline, params)
    except PipelineError as exc:
        kind: Literal["unknown-pipeline", "bad-parameters"] = (
            "unknown-pipeline" if "unknown pipeline" in str(exc) else "bad-parameters"
        )
        raise InvalidDefinition(str(exc), kind) from exc
    return Definition(pipeline, checked, input_object_id)


def create(
    task_id: str,
    job_id: str,
    account: str,
    definition: Definition,
    *,
    run_at: dt.datetime | None,
    max_attempts: int,
    now: dt.datetime,
    item: int | None = None,
) -> Task:
    """A job's first task (or its image ``item``'s): scheduled for ``run_at`` (now when not given)."""
    return Task(task_id, job_id, account, definition, run_at or now, now, max_attempts, item=item)


def reuse(existing: Task, definition: Definition) -> Task:
    """A job (or one image of it) is scheduled again: its task, when the definition is the same;
    one task per job and item."""
    if existing.definition != definition:
        raise JobHasTask(existing.job_id, existing.id, existing.item)
    return existing


def _expired(task: Task, now: dt.datetime) -> bool:
    return task.lease is None or task.lease.expires_at < now


def is_due(task: Task, now: dt.datetime) -> bool:
    """What a lease hands out: a scheduled task whose time has come, a running one whose lease
    ran out; never one whose cancellation was asked."""
    if task.cancel_requested:
        return False
    if task.state == "scheduled":
        return task.run_at <= now
    return task.state == "running" and _expired(task, now)


def standing(task: Task, now: dt.datetime) -> Standing | None:
    """Where the task counts in the queue's depth: ``ready`` (due), ``running`` (a live lease),
    ``scheduled`` (a later run-at), or nowhere (ended, or cancelled before it ran)."""
    if is_due(task, now):
        return "ready"
    if task.state == "running":
        return "running"
    if task.state == "scheduled" and not task.cancel_requested:
        return "scheduled"
    return None


def _gave_up(task: Task) -> str:
    return f"gave up after {task.max_attempts} attempts (leases expired)"


def lease(task: Task, *, owner: str, token: str, seconds: int, now: dt.datetime) -> Task:
    """A due task leased to ``owner``: running under ``token`` for ``seconds``, one attempt more;
    failed instead when that attempt is one more than it may have. Call it on due tasks only."""
    reruns = task.reruns + 1 if task.state == "running" else task.reruns
    attempts = task.attempts + 1
    if attempts > task.max_attempts:
        return dataclasses.replace(
            task,
            state="failed",
            attempts=attempts,
            reruns=reruns,
            error=_gave_up(task),
            lease=None,
            updated_at=now,
        )
    return dataclasses.replace(
        task,
        state="running",
        attempts=attempts,
        reruns=reruns,
        lease=Lease(token, owner, now + dt.timedelta(seconds=seconds)),
        updated_at=now,
    )


def _fence(task: Task, token: str) -> Lease:
    if task.state != "running" or task.lease is None or task.lease.token != token:
        raise LeaseLost(
            f"task {task.id} is {task.state} and its lease is held by another token; stop working on it",
            task.state,
        )
    return task.lease


def heartbeat(task: Task, *, token: str, seconds: int, now: dt.datetime) -> Task:
    """The lease extended to ``seconds`` from now, for its holder only, and only while it has
    not run out (once it has, another worker may already hold the task)."""
    held = _fence(task, token)
    if held.expires_at < now:
        raise LeaseLost(f"the lease on task {task.id} expired; another worker may hold it", task.state)
    return dataclasses.replace(
        task, lease=dataclasses.replace(held, expires_at=now + dt.timedelta(seconds=seconds))
    )


def complete(
    task: Task, *, token: str, result_object_id: str, result: dict[str, Any], now: dt.datetime
) -> Task:
    """The task succeeded with its stored result. A retried completion is answered as the first
    was; a cancelled task's result is refused; a stale lease holder is fenced off."""
    if task.state == "succeeded" and task.result_object_id == result_object_id:
        return task
    if task.cancel_requested or task.state == "cancelled":
        raise TaskCancelled(task.id)
    _fence(task, token)
    return dataclasses.replace(
        task, state="succeeded", result_object_id=result_object_id, result=result, lease=None, updated_at=now
    )


def backoff(attempts: int) -> dt.timedelta:
    """How long a retryable failure waits before its task is due again: doubling, at most 60 s."""
    return dt.timedelta(seconds=min(60, 2**attempts))


def fail(task: Task, *, token: str, reason: str, retryable: bool, now: dt.datetime) -> Task:
    """A run failed: the task is cancelled if that was asked, scheduled again after a backoff if
    the failure is retryable and attempts remain, failed otherwise. A repeated report on a task
    already failed or cancelled is answered with it as it is."""
    if task.state in ("failed", "cancelled"):
        return task
    _fence(task, token)
    ended = dataclasses.replace(task, error=reason, lease=None, updated_at=now)
    if task.cancel_requested:
        return dataclasses.replace(ended, state="cancelled")
    if retryable and task.attempts < task.max_attempts:
        return dataclasses.replace(ended, state="scheduled", run_at=now + backoff(task.attempts))
    return dataclasses.replace(ended, state="failed")


def cancel(task: Task, *, now: dt.datetime) -> Task:
    """A scheduled task never starts; a running one is told at its next heartbeat (its worker
    acknowledges with a failure); an ended one, or one whose cancel was asked, stays as it is."""
    if task.state in TERMINAL or task.cancel_requested:
        return task
    state: State = "cancelled" if task.state == "scheduled" else task.state
    return dataclasses.replace(task, cancel_requested=True, state=state, updated_at=now)


def settle_expired(task: Task, *, now: dt.datetime) -> Task:
    """The sweep over running tasks whose lease ran out: one whose cancellation was asked ends
    cancelled (its worker vanished), one out of attempts fails; others wait for a new lease."""
    if task.state != "running" or not _expired(task, now):
        return task
    if task.cancel_requested:
        return dataclasses.replace(task, state="cancelled", lease=None, updated_at=now)
    if task.attempts >= task.max_attempts:
        return dataclasses.replace(task, state="failed", error=_gave_up(task), lease=None, updated_at=now)
    return task
