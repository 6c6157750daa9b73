"""AI's use cases over its table: tasks, and the lease queue GPU workers pull from.

What may happen to a task is decided by :mod:`aijobs.api.tasks` (pure, shared with the
simulator's twin); this module finds the rows, locks them, mints ids and tokens, reads the clock,
and writes back what the rules decided. It raises the rules' domain errors, never HTTP problems.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aijobs.api import tasks
from aijobs.api.ai import QueueDepth
from aijobs_services.ai.models import Task
from aijobs_services.kit.db import aware, is_postgres, utcnow


def _value(row: Task) -> tasks.Task:
    held = (
        tasks.Lease(row.lease_token, row.lease_owner or "", aware(row.lease_expires_at))
        if row.lease_token is not None and row.lease_expires_at is not None
        else None
    )
    return tasks.Task(
        id=row.id,
        job_id=row.job_id,
        account=row.account,
        definition=tasks.Definition(row.pipeline, row.params, row.input_object_id),
        run_at=aware(row.run_at),
        updated_at=aware(row.updated_at),
        max_attempts=row.max_attempts,
        state=row.state,  # type: ignore[arg-type]  # the column holds only the life cycle's states
        attempts=row.attempts,
        reruns=row.reruns,
        cancel_requested=row.cancel_requested,
        lease=held,
        result_object_id=row.result_object_id,
        result=row.result,
        error=row.error,
    )


def _store(row: Task, task: tasks.Task) -> tasks.Task:
    """Write what the rules decided onto the row (the definition never changes)."""
    row.state, row.attempts, row.reruns = task.state, task.attempts, task.reruns
    row.cancel_requested, row.run_at, row.updated_at = task.cancel_requested, task.run_at, task.updated_at
    row.lease_token = task.lease.token if task.lease else None
    row.lease_owner = task.lease.owner if task.lease else None
    row.lease_expires_at = task.lease.expires_at if task.lease else None
    row.result_object_id, row.result, row.error = task.result_object_id, task.result, task.error
    return task


def _row(session: Session, task_id: str, *, lock: bool = False) -> Task:
    stmt = sa.select(Task).where(Task.id == task_id)
    row = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise tasks.UnknownTask(task_id)
    return row


def get(session: Session, task_id: str) -> tasks.Task:
    return _value(_row(session, task_id))


def query(session: Session, job_ids: list[str], task_ids: list[str]) -> list[tasks.Task]:
    """The tasks of these jobs and these ids, in one read (none when both lists are empty)."""
    conditions = [Task.job_id.in_(job_ids)] if job_ids else []
    conditions += [Task.id.in_(task_ids)] if task_ids else []
    if not conditions:
        return []
    return [_value(row) for row in session.scalars(sa.select(Task).where(sa.or_(*conditions)))]


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
) -> tuple[tasks.Task, bool]:
    """The job's task, created now (True) or found with the same definition (False)."""
    definition = tasks.defined(pipeline, params, input_object_id)
    existing = session.scalars(sa.select(Task).where(Task.job_id == job_id)).one_or_none()
    if existing is not None:
        return tasks.reuse(_value(existing), definition), False
    now = utcnow()
    task = tasks.create(
        f"task-{uuid.uuid4().hex[:20]}",
        job_id,
        account,
        definition,
        run_at=run_at,
        max_attempts=max_attempts,
        now=now,
    )
    row = Task(
        id=task.id,
        job_id=job_id,
        account=account,
        pipeline=definition.pipeline,
        params=definition.params,
        input_object_id=definition.input_object_id,
        max_attempts=max_attempts,
        created_at=now,
    )
    _store(row, task)
    session.add(row)
    session.flush()
    return task, True


def _due(now: dt.datetime) -> sa.ColumnElement[bool]:
    """:func:`aijobs.api.tasks.is_due` in SQL: scheduled tasks whose time has come, running ones
    whose lease ran out; never one whose cancellation was asked."""
    return sa.and_(
        Task.cancel_requested.is_(False),
        sa.or_(
            sa.and_(Task.state == "scheduled", Task.run_at <= now),
            sa.and_(Task.state == "running", Task.lease_expires_at < now),
        ),
    )


def depth(session: Session) -> QueueDepth:
    """The queue's depth (:func:`aijobs.api.tasks.standing`, counted in SQL) in one read-only
    query with no locks: a count a moment old is fine."""
    now = utcnow()
    live = sa.and_(Task.state == "running", Task.lease_expires_at >= now)
    later = sa.and_(Task.state == "scheduled", Task.run_at > now, Task.cancel_requested.is_(False))
    count = sa.func.count
    ready, running, scheduled = session.execute(
        sa.select(count().filter(_due(now)), count().filter(live), count().filter(later)).where(
            Task.state.in_(("scheduled", "running"))
        )
    ).one()
    return QueueDepth(ready=ready, running=running, scheduled=scheduled, demand=ready + running)


def lease(session: Session, owner: str, max_tasks: int, lease_seconds: int) -> list[tasks.Task]:
    """Up to ``max_tasks`` due tasks, leased to ``owner`` (those out of attempts fail instead).
    Two workers never get one task: SKIP LOCKED on PostgreSQL; on SQLite the write transaction
    is taken at BEGIN."""
    now = utcnow()
    stmt = sa.select(Task).where(_due(now)).order_by(Task.run_at).limit(max_tasks)
    stmt = stmt.with_for_update(skip_locked=True) if is_postgres(session) else stmt
    leased = []
    for row in session.scalars(stmt):
        task = _store(
            row, tasks.lease(_value(row), owner=owner, token=uuid.uuid4().hex, seconds=lease_seconds, now=now)
        )
        if task.state == "running":
            leased.append(task)
    session.flush()
    return leased


def heartbeat(session: Session, task_id: str, token: str, lease_seconds: int) -> tasks.Task:
    row = _row(session, task_id, lock=True)
    task = _store(row, tasks.heartbeat(_value(row), token=token, seconds=lease_seconds, now=utcnow()))
    session.flush()
    return task


def complete(
    session: Session, task_id: str, token: str, result_object_id: str, result: dict[str, Any]
) -> tasks.Task:
    row = _row(session, task_id, lock=True)
    task = tasks.complete(
        _value(row), token=token, result_object_id=result_object_id, result=result, now=utcnow()
    )
    _store(row, task)
    session.flush()
    return task


def fail(session: Session, task_id: str, token: str, reason: str, retryable: bool) -> tasks.Task:
    row = _row(session, task_id, lock=True)
    task = _store(row, tasks.fail(_value(row), token=token, reason=reason, retryable=retryable, now=utcnow()))
    session.flush()
    return task


def cancel(session: Session, task_id: str) -> tasks.Task:
    row = _row(session, task_id, lock=True)
    task = _store(row, tasks.cancel(_value(row), now=utcnow()))
    session.flush()
    return task


def settle_expired(session: Session) -> int:
    """Sweep the running tasks whose lease ran out (:func:`aijobs.api.tasks.settle_expired`):
    how many it ended."""
    now = utcnow()
    stmt = (
        sa.select(Task)
        .where(Task.state == "running", Task.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    count = 0
    for row in session.scalars(stmt):
        before = _value(row)
        after = tasks.settle_expired(before, now=now)
        if after != before:
            _store(row, after)
            count += 1
    session.flush()
    return count
