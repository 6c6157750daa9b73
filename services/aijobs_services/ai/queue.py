"""AI's use cases: tasks, and the lease queue GPU workers pull from.

A lease is a (token, expiry) pair on a running task. Only the holder of the current token may
heartbeat, complete or fail the task (fencing): a worker that stalled past its lease and was
replaced is refused without harm. An expired lease puts the task back in the queue for another
worker, counting the attempt and the re-run.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aijobs.api.pipelines import PipelineError, validate_parameters
from aijobs_services.ai.models import Task
from aijobs_services.kit.db import aware, is_postgres, utcnow
from aijobs_services.kit.problems import Conflict, NotFound, Unprocessable

TERMINAL = ("succeeded", "failed", "cancelled")


class LeaseLost(Conflict):
    slug, title = "lease-lost", "The lease is no longer yours"


class JobHasTask(Conflict):
    slug, title = "job-has-task", "The job already has a task"


class TaskCancelled(Conflict):
    slug, title = "task-cancelled", "The task was cancelled"


def get(session: Session, task_id: str, *, lock: bool = False) -> Task:
    stmt = sa.select(Task).where(Task.id == task_id)
    task = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if task is None:
        raise NotFound(f"no task {task_id!r}", slug="unknown-task", title="Unknown task")
    return task


def create(
    session: Session,
    *,
    job_id: str,
    account: str,
    pipeline: str,
    params: dict[str, Any],
    input_object_id: str,
    run_at: dt.datetime | None,
    max_attempts: int,
) -> tuple[Task, bool]:
    """The job's task, created now (True) or found identical (False); another definition: 409."""
    try:
        params = validate_parameters(pipeline, params)
    except PipelineError as exc:
        slug = "unknown-pipeline" if "unknown pipeline" in str(exc) else "bad-parameters"
        raise Unprocessable(str(exc), slug=slug, title="Invalid pipeline or parameters") from exc
    existing = session.scalars(sa.select(Task).where(Task.job_id == job_id)).one_or_none()
    if existing is not None:
        same = (existing.pipeline, existing.params, existing.input_object_id) == (
            pipeline,
            params,
            input_object_id,
        )
        if same:
            return existing, False
        raise JobHasTask(
            f"job {job_id} already has task {existing.id} with another definition", taskId=existing.id
        )
    now = utcnow()
    task = Task(
        id=f"task-{uuid.uuid4().hex[:20]}",
        job_id=job_id,
        account=account,
        pipeline=pipeline,
        params=params,
        input_object_id=input_object_id,
        run_at=run_at or now,
        state="scheduled",
        attempts=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        reruns=0,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    session.flush()
    return task, True


@dataclass(frozen=True)
class QueueDepth:
    """How much work the queue holds, as an autoscaler reads it: ``ready`` tasks are due and
    waiting for a lease (including running ones whose lease ran out), ``running`` ones are held
    by a live lease, ``scheduled`` ones wait for a later run-at."""

    ready: int
    running: int
    scheduled: int

    @property
    def demand(self) -> int:
        """The tasks workers must serve now. Running ones count too: scaling on ``ready`` alone
        would stop workers in the middle of the tasks they just leased."""
        return self.ready + self.running


def _due(now: dt.datetime) -> sa.ColumnElement[bool]:
    """What ``lease`` hands out: scheduled tasks whose time has come, running ones whose lease
    expired; never one whose cancellation was asked."""
    return sa.and_(
        Task.cancel_requested.is_(False),
        sa.or_(
            sa.and_(Task.state == "scheduled", Task.run_at <= now),
            sa.and_(Task.state == "running", Task.lease_expires_at < now),
        ),
    )


def depth(session: Session) -> QueueDepth:
    """The queue's depth in one read-only query (no locks: a count a moment old is fine)."""
    now = utcnow()
    live = sa.and_(Task.state == "running", Task.lease_expires_at >= now)
    later = sa.and_(Task.state == "scheduled", Task.run_at > now, Task.cancel_requested.is_(False))
    count = sa.func.count
    row = session.execute(
        sa.select(count().filter(_due(now)), count().filter(live), count().filter(later)).where(
            Task.state.in_(("scheduled", "running"))
        )
    ).one()
    return QueueDepth(ready=row[0], running=row[1], scheduled=row[2])


def lease(session: Session, worker: str, max_tasks: int, lease_seconds: int) -> list[Task]:
    """Hand out up to ``max_tasks`` due tasks: scheduled ones whose time has come, and running
    ones whose lease expired. Two workers never get one task (SKIP LOCKED on PostgreSQL; on
    SQLite the write transaction is taken at BEGIN)."""
    now = utcnow()
    stmt = sa.select(Task).where(_due(now)).order_by(Task.run_at).limit(max_tasks)
    stmt = stmt.with_for_update(skip_locked=True) if is_postgres(session) else stmt
    leased = []
    for task in session.scalars(stmt):
        if task.state == "running":
            task.reruns += 1  # the earlier run's lease ran out before any result was recorded
        task.attempts += 1
        if task.attempts > task.max_attempts:
            task.state, task.error = "failed", f"gave up after {task.max_attempts} attempts (leases expired)"
            task.lease_token = task.lease_owner = task.lease_expires_at = None
            task.updated_at = now
            continue
        task.state = "running"
        task.lease_owner = worker
        task.lease_token = uuid.uuid4().hex
        task.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
        task.updated_at = now
        leased.append(task)
    session.flush()
    return leased


def _fenced(task: Task, token: str) -> None:
    if task.state != "running" or task.lease_token != token:
        raise LeaseLost(
            f"task {task.id} is {task.state} and its lease is held by another token; stop working on it",
            state=task.state,
        )


def heartbeat(session: Session, task_id: str, token: str, lease_seconds: int) -> Task:
    task = get(session, task_id, lock=True)
    _fenced(task, token)
    now = utcnow()
    if aware(task.lease_expires_at or now) < now:
        raise LeaseLost(f"the lease on task {task_id} expired; another worker may hold it", state=task.state)
    task.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
    session.flush()
    return task


def complete(
    session: Session, task_id: str, token: str, result_object_id: str, result: dict[str, Any]
) -> Task:
    task = get(session, task_id, lock=True)
    if task.state == "succeeded" and task.result_object_id == result_object_id:
        return task  # a retried completion
    if task.cancel_requested or task.state == "cancelled":
        raise TaskCancelled(f"task {task_id} was cancelled; its result is not wanted")
    _fenced(task, token)
    task.state, task.result_object_id, task.result = "succeeded", result_object_id, result
    task.lease_token = task.lease_expires_at = None
    task.updated_at = utcnow()
    session.flush()
    return task


def fail(session: Session, task_id: str, token: str, reason: str, retryable: bool) -> Task:
    task = get(session, task_id, lock=True)
    if task.state in ("failed", "cancelled"):
        return task
    _fenced(task, token)
    now = utcnow()
    task.error = reason
    task.lease_token = task.lease_owner = task.lease_expires_at = None
    if task.cancel_requested:
        task.state = "cancelled"
    elif retryable and task.attempts < task.max_attempts:
        task.state = "scheduled"
        task.run_at = now + dt.timedelta(seconds=min(60, 2**task.attempts))
    else:
        task.state = "failed"
    task.updated_at = now
    session.flush()
    return task


def cancel(session: Session, task_id: str) -> Task:
    """A scheduled task never starts; a running one is told at its next heartbeat."""
    task = get(session, task_id, lock=True)
    if task.state in TERMINAL:
        return task
    task.cancel_requested = True
    if task.state == "scheduled":
        task.state = "cancelled"
    task.updated_at = utcnow()
    session.flush()
    return task


def settle_expired(session: Session) -> int:
    """Sweep: a cancelled task whose worker vanished becomes cancelled when its lease expires;
    a task out of attempts whose lease expired fails."""
    now = utcnow()
    stmt = (
        sa.select(Task)
        .where(Task.state == "running", Task.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    count = 0
    for task in session.scalars(stmt):
        if task.cancel_requested:
            task.state = "cancelled"
        elif task.attempts >= task.max_attempts:
            task.state, task.error = "failed", f"gave up after {task.max_attempts} attempts (leases expired)"
        else:
            continue
        task.lease_token = task.lease_owner = task.lease_expires_at = None
        task.updated_at = now
        count += 1
    session.flush()
    return count
