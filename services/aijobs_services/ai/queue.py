"""AI's use cases over its table: tasks, and the lease queue GPU workers pull from.

What may happen to a task is decided by :mod:`aijobs.api.tasks` (pure, shared with the
simulator's twin); this module finds the rows, locks them, mints ids and tokens, reads the clock,
and writes back what the rules decided. It raises the rules' domain errors, never HTTP problems.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aijobs.api import ai, tasks
from aijobs.api.ai import JobTaskCounts, JobTasksCancelled, QueueDepth, page_position
from aijobs_services.ai.models import Task
from aijobs_services.kit.db import aware, is_postgres, utcnow
from aijobs_services.kit.idempotency import Quick

TASKS = cast("sa.Table", Task.__table__)


def _value(row: Task | sa.Row[Any]) -> tasks.Task:
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
        item=row.item,
    )


def _columns(task: tasks.Task) -> dict[str, Any]:
    """The columns the life cycle moves, as the rules left them."""
    held = task.lease
    return {
        "state": task.state,
        "attempts": task.attempts,
        "reruns": task.reruns,
        "cancel_requested": task.cancel_requested,
        "run_at": task.run_at,
        "updated_at": task.updated_at,
        "lease_token": held.token if held else None,
        "lease_owner": held.owner if held else None,
        "lease_expires_at": held.expires_at if held else None,
        "result_object_id": task.result_object_id,
        "result": task.result,
        "error": task.error,
    }


def _store(row: Task, task: tasks.Task) -> tasks.Task:
    """Write what the rules decided onto the row (the definition never changes)."""
    for name, value in _columns(task).items():
        setattr(row, name, value)
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


def _position() -> sa.ColumnElement[int]:
    """A task's place in its job: :func:`aijobs.api.ai.page_position` in SQL, the expression
    the unique index ``uq_tasks_job_item`` is built on (so lookups and pages by job and item
    scan it). The -1 is written into the SQL, not bound: under a parameter it would not be the
    indexed expression to a prepared statement's generic plan."""
    return sa.func.coalesce(Task.item, sa.literal_column("-1"))


def counts(session: Session, job_ids: list[str]) -> list[JobTaskCounts]:
    """Each job's counts, in the order asked (a repeated job each time, an unknown one with
    zeros), from one grouped read: what a follower reads every few seconds instead of the tasks."""
    wanted = list(dict.fromkeys(job_ids))
    stmt = (
        sa.select(Task.job_id, Task.state, sa.func.count(), sa.func.max(Task.updated_at))
        .where(Task.job_id.in_(wanted))
        .group_by(Task.job_id, Task.state)
    )
    by_job: dict[str, dict[str, int]] = {job: {} for job in wanted}
    latest: dict[str, dt.datetime] = {}
    for job_id, state, n, updated in session.execute(stmt):
        by_job[job_id][state] = n
        latest[job_id] = max(latest.get(job_id, aware(updated)), aware(updated))
    return [JobTaskCounts.of(job, by_job[job], latest.get(job)) for job in job_ids]


# A page of a job's tasks is read as plain rows straight into the answer: the columns it shows
# share its fields' names. No ORM object and no life-cycle task is built for a row only read (a
# batch's delivery reads every task of the job: 10,000 for a batch of 10,000 images), which made
# a page of 1,000 about 40 % cheaper (/v1/jobs/{id}/tasks, 10,000 tasks, in process). So every
# field of ``ai.Task`` must be a column copied as it is; the single read (and the simulator's
# twin) go through ``Task.of``, and a test holds a page's tasks equal to their single reads.
_PAGE_COLUMNS = [TASKS.c[name] for name in ai.Task.model_fields]


def _page_task(row: sa.Row[Any]) -> ai.Task:
    values = dict(zip(ai.Task.model_fields, row, strict=True))
    values["run_at"], values["updated_at"] = aware(values["run_at"]), aware(values["updated_at"])
    return ai.Task.model_validate(values)


def page(session: Session, job_id: str, after: int | None, limit: int) -> tuple[list[ai.Task], int | None]:
    """Up to ``limit`` of the job's tasks past position ``after`` (none: from the first), in
    their images' order, and the ``after`` of the next page (None on the last). One ordered
    scan of the unique index ``uq_tasks_job_item``, one row further than the page to know
    whether another follows. A Core read on the session's connection: it sees what is flushed
    (it does not autoflush), as a route's fresh transaction has nothing pending."""
    position = _position()
    stmt = sa.select(*_PAGE_COLUMNS).where(TASKS.c.job_id == job_id)
    if after is not None:
        stmt = stmt.where(position > after)
    rows = session.connection().execute(stmt.order_by(position).limit(limit + 1)).all()
    found = [_page_task(row) for row in rows[:limit]]
    more = len(rows) > limit
    return found, (page_position(found[-1].item) if more else None)


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
    item: int | None = None,
) -> tuple[tasks.Task, bool]:
    """The task of the job (of its image ``item``), created now (True) or found with the same
    definition (False). One statement when it is new: the insert yields to the row already
    there (which a concurrent creation may have just committed), and only then is it read."""
    definition = tasks.defined(pipeline, params, input_object_id)
    now = utcnow()
    task = _new_task(job_id, account, definition, run_at, max_attempts, now, item)
    values = _columns(task) | {
        "id": task.id,
        "job_id": job_id,
        "item": item,
        "account": account,
        "pipeline": definition.pipeline,
        "params": definition.params,
        "input_object_id": definition.input_object_id,
        "max_attempts": max_attempts,
        "created_at": now,
    }
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    added = session.execute(insert(Task).values(values).on_conflict_do_nothing().returning(Task.id)).first()
    if added is not None:
        return task, True
    mine = _position() == page_position(item)
    existing = session.scalars(sa.select(Task).where(Task.job_id == job_id, mine)).one()
    return tasks.reuse(_value(existing), definition), False


def _due_kinds(now: dt.datetime) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """:func:`aijobs.api.tasks.is_due` in SQL, as its two kinds: scheduled tasks whose time has
    come, running ones whose lease ran out; never one whose cancellation was asked."""
    waiting = sa.and_(Task.cancel_requested.is_(False), Task.state == "scheduled", Task.run_at <= now)
    lapsed = sa.and_(Task.cancel_requested.is_(False), Task.state == "running", Task.lease_expires_at < now)
    return waiting, lapsed


def _due(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(*_due_kinds(now))


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
    is taken at BEGIN.

    The rows are read and written as plain rows, not as mapped objects: a worker's lease is a
    few dozen rows, each a dozen columns the rule moves, and the ORM's loading, tracking and
    flush of them were most of a lease's CPU in AI (py-spy on bench/batch.py, grayscale; plain
    rows: 1,246 against 964 tasks/s leased, bench/task_queue at 64 a lease). The rule
    (:func:`aijobs.api.tasks.lease`) decides each as before; its changes go in one UPDATE sent
    once a row (an executemany: one pipeline on PostgreSQL)."""
    now = utcnow()
    # One locking read per kind of due task, each an ordered scan of its own index that stops
    # at max_tasks rows: ix_tasks_due (state, run_at) for the scheduled ones, the lease
    # expiry's for the lapsed ones (only a running task has one; by state, a read would pass
    # every running task). One read of both kinds (an OR) sorts every due row first. The
    # earliest max_tasks of the two are leased; the few others stay locked until this commits.
    picked: list[sa.Row[Any]] = []
    waiting, lapsed = _due_kinds(now)
    for due, order in ((waiting, Task.run_at), (lapsed, Task.lease_expires_at)):
        stmt = sa.select(TASKS).where(due).order_by(order).limit(max_tasks)
        picked += session.execute(stmt.with_for_update(skip_locked=True) if is_postgres(session) else stmt)
    picked = sorted(picked, key=lambda row: row.run_at)[:max_tasks]
    leased, changed = [], []
    for row in picked:
        task = tasks.lease(_value(row), owner=owner, token=uuid.uuid4().hex, seconds=lease_seconds, now=now)
        changed.append({"task_id": task.id, **_columns(task)})
        if task.state == "running":
            leased.append(task)
    if changed:
        session.execute(TASKS.update().where(TASKS.c.id == sa.bindparam("task_id")), changed)
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


def cancel_job(session: Session, job_id: str, *, now: dt.datetime | None = None) -> JobTasksCancelled:
    """Cancel each of the job's tasks as :func:`cancel` does one, in two statements whatever the
    job's size (a batch has up to 100,000 tasks), and count them after. A job without tasks is
    answered with zeros."""
    now = now or utcnow()
    # :func:`aijobs.api.tasks.cancel` in SQL. The rule leaves an ended task, and one whose
    # cancellation was asked, as it is; it sets ``cancel_requested`` on the others, and ends a
    # scheduled one at once (cancelled) while a running one stays running until its worker
    # acknowledges (or its lease runs out: the sweep ends it). Nothing else of the task moves.
    # Each UPDATE locks its rows as the single cancel's SELECT ... FOR UPDATE does, so a lease, a
    # completion or a failure racing it sees the task before or after, never half.
    asked = sa.and_(Task.job_id == job_id, Task.cancel_requested.is_(False))
    ended = session.execute(
        sa.update(Task)
        .where(asked, Task.state == "scheduled")
        .values(state="cancelled", cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    told = session.execute(
        sa.update(Task)
        .where(asked, Task.state == "running")
        .values(cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    cancelled, stopping = _rowcount(ended), _rowcount(told)
    return JobTasksCancelled(
        job_id=job_id, cancelled=cancelled, stopping=stopping, counts=counts(session, [job_id])[0]
    )


def _rowcount(result: sa.Result[Any]) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE's result: a CursorResult


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


# The hot paths as one statement each (PostgreSQL), which claims the Idempotency-Key, acts and
# stores the answer: one round trip, atomic by itself, sent in one pipeline with the other items
# of a bulk request (:class:`aijobs_services.kit.idempotency.Quick`). Each acts only where the
# life cycle would simply act on a key seen for the first time (the WHERE clauses say
# :func:`aijobs.api.tasks.create` for a job and item without a task, and
# :func:`aijobs.api.tasks.complete` under the current lease); anything else changes nothing,
# returns no row, and the portable path decides.

_QUICK_CREATE = sa.text("""
WITH added AS (
    INSERT INTO tasks (id, job_id, item, account, pipeline, params, input_object_id, max_attempts,
                       created_at, state, attempts, reruns, cancel_requested, run_at, updated_at,
                       lease_token, lease_owner, lease_expires_at, result_object_id, result, error)
    SELECT :id, :job_id, CAST(:item AS INTEGER), :account, :pipeline, CAST(:params AS JSON),
           :input_object_id, :max_attempts, :now, :state, :attempts, :reruns, :cancel_requested,
           :run_at, :updated_at, CAST(:lease_token AS TEXT), CAST(:lease_owner AS TEXT),
           CAST(:lease_expires_at AS TIMESTAMPTZ), CAST(:result_object_id AS TEXT),
           CAST(:result AS JSON), CAST(:error AS TEXT)
    WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = :caller AND key = :key)
    ON CONFLICT DO NOTHING
    RETURNING id
)
INSERT INTO idempotency_keys (caller, key, fingerprint, route, response_status, response_body,
                              response_media_type, created_at, expires_at)
SELECT :caller, :key, :fingerprint, :route, 201, :response_body, 'application/json', :created_at,
       :key_expires_at
FROM added
RETURNING response_body
""")


def _iso(column: str) -> str:
    """A time as :data:`aijobs.api.fields.Instant` writes it: Python's isoformat in UTC, the
    microseconds only when there are some."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN extract(microseconds FROM {column})"
        f"::bigint % 1000000 = 0 THEN '' ELSE to_char({utc}, '.US') END || '+00:00'"
    )


# The answer (:class:`aijobs.api.ai.Task`) is built here from the row as the rule leaves it.
_QUICK_COMPLETE = sa.text(
    """
WITH done AS (
    UPDATE tasks SET state = 'succeeded', result_object_id = :result_object_id,
                     result = CAST(:result AS JSON), lease_token = NULL, lease_owner = NULL,
                     lease_expires_at = NULL, updated_at = :now
    WHERE id = :task_id AND state = 'running' AND lease_token = :lease_token
      AND cancel_requested IS FALSE
      AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = :caller AND key = :key)
    RETURNING *
)
INSERT INTO idempotency_keys (caller, key, fingerprint, route, response_status, response_body,
                              response_media_type, created_at, expires_at)
SELECT :caller, :key, :fingerprint, :route, 200,
       json_build_object(
           'id', id, 'jobId', job_id, 'account', account, 'pipeline', pipeline, 'params', params,
           'inputObjectId', input_object_id, 'runAt', RUN_AT_ISO, 'state', state,
           'attempts', attempts, 'maxAttempts', max_attempts, 'reruns', reruns,
           'cancelRequested', cancel_requested, 'resultObjectId', result_object_id, 'result', result,
           'error', error, 'updatedAt', CAST(:now_iso AS TEXT), 'item', item
       )::text,
       'application/json', :created_at, :key_expires_at
FROM done
RETURNING response_body
""".replace("RUN_AT_ISO", _iso("run_at"))
)


def _key_params(claim: dict[str, Any]) -> dict[str, Any]:
    """The key's columns (:meth:`IdempotencyStore.claim_row`) as the statements name them."""
    return {
        "caller": claim["caller"],
        "key": claim["key"],
        "fingerprint": claim["fingerprint"],
        "route": claim["route"],
        "created_at": claim["created_at"],
        "key_expires_at": claim["expires_at"],
    }


def quick_create(
    claim: dict[str, Any],
    answer: Callable[[tasks.Task], dict[str, Any]],
    *,
    job_id: str,
    account: str,
    pipeline: str,
    params: dict[str, Any],
    input_object_id: str,
    run_at: dt.datetime | None,
    max_attempts: int,
    item: int | None = None,
) -> Quick | None:
    """:func:`create` as one statement for a new key and a job (and item) without a task; see
    above. ``claim`` is the key's (:meth:`IdempotencyStore.claim_row`), ``answer`` renders the
    task created, which the statement stores. None: a definition the rules refuse, left to the
    portable path to answer."""
    try:
        definition = tasks.defined(pipeline, params, input_object_id)
    except tasks.TaskError:
        return None
    now = utcnow()
    task = _new_task(job_id, account, definition, run_at, max_attempts, now, item)
    columns = _columns(task)
    return Quick(
        _QUICK_CREATE,
        {
            **_key_params(claim),
            **columns,
            "params": json.dumps(definition.params),
            "result": None if task.result is None else json.dumps(task.result),
            "id": task.id,
            "job_id": job_id,
            "item": item,
            "account": account,
            "pipeline": definition.pipeline,
            "input_object_id": definition.input_object_id,
            "max_attempts": max_attempts,
            "now": now,
            "response_body": json.dumps(answer(task)),
        },
        201,
    )


def quick_complete(
    claim: dict[str, Any], task_id: str, token: str, result_object_id: str, result: dict[str, Any]
) -> Quick:
    """:func:`complete` as one statement for a new key and a task running under ``token``,
    its cancellation not asked; see above."""
    now = utcnow()
    return Quick(
        _QUICK_COMPLETE,
        {
            **_key_params(claim),
            "task_id": task_id,
            "lease_token": token,
            "result_object_id": result_object_id,
            "result": json.dumps(result),
            "now": now,
            "now_iso": now.isoformat(),
        },
        200,
    )


def _new_task(
    job_id: str,
    account: str,
    definition: tasks.Definition,
    run_at: dt.datetime | None,
    max_attempts: int,
    now: dt.datetime,
    item: int | None,
) -> tasks.Task:
    """A task to create now, with a fresh id (for :func:`create` and :func:`quick_create`)."""
    return tasks.create(
        f"task-{uuid.uuid4().hex[:20]}",
        job_id,
        account,
        definition,
        run_at=run_at,
        max_attempts=max_attempts,
        now=now,
        item=item,
    )
