"""The ai service's twin."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aijobs_dev.simulation.twins.base import Reply, Twin, _iso, _parse, _parts


@dataclass
class Task:
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

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "jobId": self.job_id,
            "account": self.account,
            "pipeline": self.pipeline,
            "params": self.params,
            "inputObjectId": self.input_object_id,
            "runAt": _iso(self.run_at),
            "state": self.state,
            "reruns": self.reruns,
            "cancelRequested": self.cancel_requested,
            "resultObjectId": self.result_object_id,
            "error": self.error,
            "updatedAt": _iso(self.updated_at),
        }


class AITwin(Twin):
    name = "ai"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.tasks: dict[str, Task] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if (method, p) == ("POST", ["tasks"]):
            return self.create, ()
        if (method, p) == ("POST", ["tasks", "query"]):
            return self.query, ()
        if method == "GET" and len(p) == 2 and p[0] == "tasks":
            return self.get, (p[1],)
        if method == "POST" and len(p) == 3 and p[0] == "tasks" and p[2] == "cancel":
            return self.cancel, (p[1],)
        return None

    def create(self, *, body: Any, **_: Any) -> Reply:
        existing = next((t for t in self.tasks.values() if t.job_id == body["jobId"]), None)
        definition = (body["pipeline"], body.get("params") or {}, body["inputObjectId"])
        if existing is not None:
            if (existing.pipeline, existing.params, existing.input_object_id) == definition:
                return Reply(200, existing.public())
            return Reply.problem(
                409, "job-has-task", f"job {body['jobId']} already has task {existing.id}", taskId=existing.id
            )
        now = self.clock()
        run_at = _parse(body["runAt"]) if body.get("runAt") else now
        task = Task(
            self.new_id("task"), body["jobId"], body["account"], *definition, run_at=run_at, updated_at=now
        )
        self.tasks[task.id] = task
        return Reply(201, task.public())

    def get(self, task_id: str, **_: Any) -> Reply:
        task = self.tasks.get(task_id)
        if task is None:
            return Reply.problem(404, "unknown-task", f"no task {task_id!r}")
        return Reply(200, task.public())

    def query(self, *, body: Any, **_: Any) -> Reply:
        jobs = set(body.get("jobIds") or [])
        return Reply(200, {"items": [t.public() for t in self.tasks.values() if t.job_id in jobs]})

    def cancel(self, task_id: str, **_: Any) -> Reply:
        task = self.tasks.get(task_id)
        if task is None:
            return Reply.problem(404, "unknown-task", f"no task {task_id!r}")
        if task.state not in ("succeeded", "failed", "cancelled"):
            task.cancel_requested = True
            if task.state == "scheduled":
                task.state = "cancelled"
            task.updated_at = self.clock()
        return Reply(200, task.public())


# ------------------------------------------------------------------------------------- main
