"""The AI service's twin: its routes over a dict, with the service's own life cycle.

What may happen to a task is decided by :mod:`aijobs.api.tasks`, the rules the service applies
too; requests are read with the service's wire models and answers built from them
(:mod:`aijobs.api.ai`), so the twin cannot answer what the service would not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field, ValidationError

from aijobs.api import tasks
from aijobs.api.ai import (
    Completion,
    Failure,
    Heartbeat,
    JobTaskCounts,
    JobTasksCancelled,
    LeasedTask,
    LeaseRequest,
    Leases,
    QueueDepth,
    TaskCompletion,
    TaskCounts,
    TaskCountsQuery,
    TaskCreate,
    TaskList,
    TaskPage,
    TaskQuery,
    page_position,
    refusal,
)
from aijobs.api.ai import Task as TaskAnswer
from aijobs.api.bulk import BulkAnswer, BulkRequest, ItemAnswer
from aijobs_dev.simulation.twins.base import Reply, Twin, _parts

R = TypeVar("R", bound=BaseModel)

_Bulk = BulkRequest[dict[str, Any]]
# A bulk item as the single call it stands for: the model that reads the item, the single route's
# path, the key, the item as sent, the single route's body.
_Call = tuple[type[BaseModel], str, str, dict[str, Any], dict[str, Any]]


@dataclass
class Task:
    """A stored task. Mutable, because the simulator's worker moves it by hand (``world.py``);
    the twin's own routes move it only through :mod:`aijobs.api.tasks`."""

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
    attempts: int = 0
    max_attempts: int = 5
    result: dict[str, Any] | None = None
    lease: tasks.Lease | None = None
    item: int | None = None  # the image's index in a batch job

    @classmethod
    def of(cls, value: tasks.Task) -> Task:
        d = value.definition
        task = cls(
            value.id, value.job_id, value.account, d.pipeline, d.params, d.input_object_id, value.run_at
        )
        task.item = value.item
        task.take(value)
        return task

    def value(self) -> tasks.Task:
        return tasks.Task(
            id=self.id,
            job_id=self.job_id,
            account=self.account,
            definition=tasks.Definition(self.pipeline, self.params, self.input_object_id),
            run_at=self.run_at,
            updated_at=self.updated_at,
            max_attempts=self.max_attempts,
            state=cast(tasks.State, self.state),
            attempts=self.attempts,
            reruns=self.reruns,
            cancel_requested=self.cancel_requested,
            lease=self.lease,
            result_object_id=self.result_object_id,
            result=self.result,
            error=self.error,
            item=self.item,
        )

    def take(self, value: tasks.Task) -> tasks.Task:
        """Become ``value`` (what a rule decided); the definition never changes."""
        self.state, self.run_at, self.updated_at = value.state, value.run_at, value.updated_at
        self.attempts, self.max_attempts, self.reruns = value.attempts, value.max_attempts, value.reruns
        self.cancel_requested, self.lease = value.cancel_requested, value.lease
        self.result_object_id, self.result, self.error = value.result_object_id, value.result, value.error
        return value

    def public(self) -> dict[str, Any]:
        return _wire(TaskAnswer.of(self.value()))


class _PageQuery(BaseModel):
    """``GET /v1/jobs/{jobId}/tasks``'s query, bounded as the service's route bounds it."""

    after: int | None = Field(default=None, ge=-1, le=999_999)
    limit: int = Field(default=500, ge=1, le=1000)


def _wire(answer: BaseModel) -> dict[str, Any]:
    """The answer as the service puts it on the wire."""
    return answer.model_dump(mode="json", by_alias=True)


class AITwin(Twin):
    name = "ai"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.tasks: dict[str, Task] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if (method, p) == ("POST", ["tasks"]):
            return self.create, ()
        if (method, p) == ("POST", ["bulk", "tasks"]):
            return self.bulk_tasks, ()
        if (method, p) == ("POST", ["bulk", "completions"]):
            return self.bulk_completions, ()
        if (method, p) == ("POST", ["tasks", "query"]):
            return self.query, ()
        if (method, p) == ("POST", ["tasks", "counts"]):
            return self.counts, ()
        if method == "GET" and len(p) == 3 and (p[0], p[2]) == ("jobs", "tasks"):
            return self.job_tasks, (p[1],)
        if method == "POST" and len(p) == 4 and (p[0], p[2], p[3]) == ("jobs", "tasks", "cancel"):
            return self.cancel_job, (p[1],)
        if (method, p) == ("POST", ["leases"]):
            return self.lease, ()
        if (method, p) == ("GET", ["queue", "depth"]):
            return self.depth, ()
        if method == "GET" and len(p) == 2 and p[0] == "tasks":
            return self.get, (p[1],)
        if method == "POST" and len(p) == 3 and p[0] == "tasks":
            moves: dict[str, Callable[..., Reply]] = {
                "cancel": self.cancel,
                "heartbeat": self.heartbeat,
                "complete": self.complete,
                "fail": self.fail,
            }
            move = moves.get(p[2])
            return (move, (p[1],)) if move is not None else None
        return None

    # ------------------------------------------------------------------------------ routes
    def create(self, *, body: Any, **_: Any) -> Reply:
        def act(sent: TaskCreate) -> Reply:
            definition = tasks.defined(sent.pipeline, sent.params, sent.input_object_id)
            existing = next(
                (t for t in self.tasks.values() if (t.job_id, t.item) == (sent.job_id, sent.item)), None
            )
            if existing is not None:
                return Reply(200, _wire(TaskAnswer.of(tasks.reuse(existing.value(), definition))))
            task = tasks.create(
                self.new_id("task"),
                sent.job_id,
                sent.account,
                definition,
                run_at=sent.run_at,
                max_attempts=sent.max_attempts,
                now=self.clock(),
                item=sent.item,
            )
            self.tasks[task.id] = Task.of(task)
            return Reply(201, _wire(TaskAnswer.of(task)))

        return _answer(TaskCreate, body, act)

    def bulk_tasks(self, *, body: Any, **_: Any) -> Reply:
        """Each item is ``POST /v1/tasks`` under its own key, answered from that key's record."""
        return _answer(
            _Bulk,
            body,
            lambda sent: self._bulk(
                [(TaskCreate, "/v1/tasks", i.key, i.request, i.request) for i in sent.items]
            ),
        )

    def bulk_completions(self, *, body: Any, **_: Any) -> Reply:
        """Each item is its task's ``/complete`` under its own key, the item less ``taskId`` its
        body (so the single call and the item replay each other)."""

        def act(sent: _Bulk) -> Reply:
            calls: list[_Call] = []
            for i in sent.items:
                named = i.request.get("taskId")
                path = f"/v1/tasks/{named if isinstance(named, str) else ''}/complete"
                single = {k: v for k, v in i.request.items() if k != "taskId"}
                calls.append((TaskCompletion, path, i.key, i.request, single))
            return self._bulk(calls)

        return _answer(_Bulk, body, act)

    def _bulk(self, calls: list[_Call]) -> Reply:
        """The items in order: one its single route's model refuses is that route's 422, kept
        under no key (as the service does); any other is the single call under its key."""
        answers = []
        for model, path, key, request, single in calls:
            try:
                model.model_validate(request)
            except ValidationError as exc:
                refused = Reply.problem(422, "validation-error", str(exc))
                answers.append(ItemAnswer(key=key, status=422, body=refused.body))
                continue
            stored = self._idem.get(key)
            reply = self.handle("POST", path, key, single, {}, b"")
            replayed = stored is not None and reply is stored[1]  # not a reused key's refusal
            answers.append(ItemAnswer(key=key, status=reply.status, replayed=replayed, body=reply.body))
        return Reply(200, _wire(BulkAnswer(items=answers)))

    def get(self, task_id: str, **_: Any) -> Reply:
        return _refused(lambda: Reply(200, _wire(TaskAnswer.of(self._find(task_id).value()))))

    def query(self, *, body: Any, **_: Any) -> Reply:
        def act(sent: TaskQuery) -> Reply:
            jobs, ids = set(sent.job_ids), set(sent.task_ids)
            found = [TaskAnswer.of(t.value()) for t in self.tasks.values() if t.job_id in jobs or t.id in ids]
            return Reply(200, _wire(TaskList(items=found)))

        return _answer(TaskQuery, body, act)

    def counts(self, *, body: Any, **_: Any) -> Reply:
        def act(sent: TaskCountsQuery) -> Reply:
            # One pass over the tasks, as the service's one grouped read: a follower asks for
            # every batch in flight at once.
            by_job: dict[str, list[tasks.Task]] = {job: [] for job in sent.job_ids}
            for task in self.tasks.values():
                if task.job_id in by_job:
                    by_job[task.job_id].append(task.value())
            found = [JobTaskCounts.count(job, by_job[job]) for job in sent.job_ids]
            return Reply(200, _wire(TaskCounts(items=found)))

        return _answer(TaskCountsQuery, body, act)

    def job_tasks(self, job_id: str, *, params: dict[str, str], **_: Any) -> Reply:
        def act(sent: _PageQuery) -> Reply:
            start = -2 if sent.after is None else sent.after
            mine = sorted(
                (t for t in self._of_job(job_id) if page_position(t.item) > start),
                key=lambda t: page_position(t.item),
            )
            found = mine[: sent.limit]
            following = page_position(found[-1].item) if len(mine) > sent.limit else None
            items = [TaskAnswer.of(t.value()) for t in found]
            return Reply(200, _wire(TaskPage(job_id=job_id, items=items, next=following)))

        return _answer(_PageQuery, params, act)

    def cancel_job(self, job_id: str, **_: Any) -> Reply:
        """Each of the job's tasks as :meth:`cancel` moves it; counted by what the rule did."""
        now, cancelled, stopping = self.clock(), 0, 0
        for task in self._of_job(job_id):
            before = task.value()
            after = task.take(tasks.cancel(before, now=now))
            if after == before:
                continue
            if after.state == "cancelled":
                cancelled += 1
            else:
                stopping += 1
        done = JobTasksCancelled(
            job_id=job_id, cancelled=cancelled, stopping=stopping, counts=self._counts(job_id)
        )
        return Reply(200, _wire(done))

    def depth(self, **_: Any) -> Reply:
        now = self.clock()
        standings = [s for t in self.tasks.values() if (s := tasks.standing(t.value(), now)) is not None]
        return Reply(200, _wire(QueueDepth.count(standings)))

    def cancel(self, task_id: str, **_: Any) -> Reply:
        return self._move(task_id, lambda t, now: tasks.cancel(t, now=now))

    def lease(self, *, body: Any, **_: Any) -> Reply:
        def act(sent: LeaseRequest) -> Reply:
            now, leased = self.clock(), []
            due = sorted(
                (t for t in self.tasks.values() if tasks.is_due(t.value(), now)), key=lambda t: t.run_at
            )
            for task in due[: sent.max_tasks]:
                after = task.take(
                    tasks.lease(
                        task.value(),
                        owner=f"worker/{sent.worker}",  # the twin knows no callers: the shared identity
                        token=self.new_id("lease"),
                        seconds=sent.lease_seconds,
                        now=now,
                    )
                )
                if after.state == "running":
                    leased.append(LeasedTask.of(after))
            return Reply(200, _wire(Leases(items=leased)))

        return _answer(LeaseRequest, body, act)

    def heartbeat(self, task_id: str, *, body: Any, **_: Any) -> Reply:
        def act(sent: Heartbeat) -> Reply:
            task = self._find(task_id)
            beat = tasks.heartbeat(
                task.value(), token=sent.lease_token, seconds=sent.lease_seconds, now=self.clock()
            )
            return Reply(200, _wire(LeasedTask.of(task.take(beat))))

        return _answer(Heartbeat, body, act)

    def complete(self, task_id: str, *, body: Any, **_: Any) -> Reply:
        return _answer(
            Completion,
            body,
            lambda sent: self._move(
                task_id,
                lambda t, now: tasks.complete(
                    t,
                    token=sent.lease_token,
                    result_object_id=sent.result_object_id,
                    result=sent.result,
                    now=now,
                ),
            ),
        )

    def fail(self, task_id: str, *, body: Any, **_: Any) -> Reply:
        return _answer(
            Failure,
            body,
            lambda sent: self._move(
                task_id,
                lambda t, now: tasks.fail(
                    t, token=sent.lease_token, reason=sent.reason, retryable=sent.retryable, now=now
                ),
            ),
        )

    # ------------------------------------------------------------------------------ helpers
    def _of_job(self, job_id: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.job_id == job_id]

    def _counts(self, job_id: str) -> JobTaskCounts:
        return JobTaskCounts.count(job_id, (t.value() for t in self._of_job(job_id)))

    def _find(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise tasks.UnknownTask(task_id)
        return task

    def _move(self, task_id: str, rule: Callable[[tasks.Task, dt.datetime], tasks.Task]) -> Reply:
        def act() -> Reply:
            task = self._find(task_id)
            return Reply(200, _wire(TaskAnswer.of(task.take(rule(task.value(), self.clock())))))

        return _refused(act)


def _refused(act: Callable[[], Reply]) -> Reply:
    """``act``'s reply, or the problem the service answers a refusal of the life cycle with."""
    try:
        return act()
    except tasks.TaskError as error:
        known, members = refusal(error)
        return Reply.problem(known.status, known.slug, str(error), **members)


def _answer(model: type[R], body: Any, act: Callable[[R], Reply]) -> Reply:
    """``act`` on the body read as the service reads it; a body it refuses is a 422."""
    try:
        sent = model.model_validate(body if body is not None else {})
    except ValidationError as exc:
        return Reply.problem(422, "validation-error", str(exc))
    return _refused(lambda: act(sent))
