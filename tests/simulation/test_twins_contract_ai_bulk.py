"""The AI twin's bulk routes answer as AI's do: the same sequence of calls runs against the twin
and against the real service (in process, on the throwaway PostgreSQL), and every item's status,
replay flag, problem type and the fields a caller reads must agree (see test_twins_contract.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from aijobs_dev.simulation.twins import AITwin

from tests.services.conftest import Api, _in_process
from tests.simulation.test_twins_contract import _now, _slug
from tests.simulation.test_twins_contract import secrets as secrets  # the fixture

pytestmark = pytest.mark.postgres

FIELDS = ("state", "jobId", "item", "pipeline", "resultObjectId")


def _items(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a caller reads of a bulk answer: per item, in order, its key, status, replay flag,
    and the problem's type or the task's fields."""
    seen = []
    for item in answer["items"]:
        body = item["body"]
        read = _slug(body) if item["status"] >= 400 else tuple(body.get(f) for f in FIELDS)
        seen.append((item["key"], item["status"], item["replayed"], read))
    return seen


class Both:
    """One call made to the real service and to the twin, as one caller."""

    def __init__(self, real: Api, twin: AITwin, caller: str) -> None:
        self.real, self.twin, self.caller = real, twin, caller

    def post(self, paths: tuple[str, str], bodies: tuple[Any, Any], key: str | None) -> tuple[Any, Any]:
        """The call with each side's own path and body (ids and lease tokens differ)."""
        response = self.real.post(paths[0], bodies[0], caller=self.caller, key=key)
        reply = self.twin.handle("POST", paths[1], key, bodies[1], {}, b"")
        assert response.status_code == reply.status, f"POST {paths[1]}: {response.text} vs {reply.body}"
        return response.json(), reply.body

    def same(self, path: str, body: Any, key: str | None = None) -> tuple[Any, Any]:
        return self.post((path, path), (body, body), key)


def _task(job: str, **fields: Any) -> dict[str, Any]:
    return {"jobId": job, "account": "acme", "pipeline": "grayscale", "inputObjectId": "o1", **fields}


def _bulk(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"items": [{"key": key, "request": request} for key, request in items]}


def test_the_ai_twin_creates_tasks_in_bulk_as_ai_does(pg_url: str, secrets: dict[str, str]) -> None:
    items = [
        ("s0", _task("job-0")),  # sent alone first: replayed
        ("b1", _task("job-1")),
        ("b2", _task("job-0", pipeline="thumbnail")),  # job-0 has another task: 409
        ("b3", _task("job-3", runAt="tomorrow")),  # refused by the model: 422, kept under no key
        ("b4", _task("batch", item=0)),
        ("b5", _task("batch", item=1)),
        ("b6", _task("batch", item=0, pipeline="thumbnail")),  # image 0 has another task: 409
        ("b7", _task("job-1")),  # another key, the same definition: job-1's task, 200
    ]
    for api, _ in _in_process("ai", pg_url, secrets):
        both = Both(api, AITwin(_now), "operator")
        both.same("/v1/tasks", _task("job-0"), "s0")
        real, twin = both.same("/v1/bulk/tasks", _bulk(items))
        assert _items(real) == _items(twin)
        assert [s for _, s, _, _ in _items(real)] == [201, 201, 409, 422, 201, 201, 409, 200]
        again_real, again_twin = both.same("/v1/bulk/tasks", _bulk(items))  # a lost answer, resent
        assert _items(again_real) == _items(again_twin)
        assert [r for _, _, r, _ in _items(again_real)] == [True, True, True, False, True, True, True, True]
        single_real, single_twin = both.same("/v1/tasks", _task("batch", item=1), "b5")  # the item's key
        assert single_real["id"] == real["items"][5]["body"]["id"]
        assert single_twin["id"] == twin["items"][5]["body"]["id"]
        reused_real, reused_twin = both.same("/v1/bulk/tasks", _bulk([("b1", _task("job-9"))]))
        assert _items(reused_real) == _items(reused_twin)
        assert _items(reused_real)[0][3] == "idempotency-key-reused"
        invalid_real, invalid_twin = both.same("/v1/bulk/tasks", {"items": []})
        assert _slug(invalid_real) == _slug(invalid_twin) == "validation-error"


def test_the_ai_twin_completes_tasks_in_bulk_as_ai_does(pg_url: str, secrets: dict[str, str]) -> None:
    done = {"resultObjectId": "r1", "result": {"size": 1}}
    for api, _ in _in_process("ai", pg_url, secrets):
        twin = AITwin(_now)
        operator, worker = Both(api, twin, "operator"), Both(api, twin, "worker")
        for i in range(3):
            operator.same("/v1/tasks", _task(f"job-{i}"), f"c{i}")
        lease = {"worker": "w1", "maxTasks": 3, "leaseSeconds": 30}
        leased_real, leased_twin = worker.same("/v1/leases", lease, "lease-1")
        real_tasks, twin_tasks = leased_real["items"], leased_twin["items"]
        # The first is completed alone first: its item, under the same key, replays it.
        first = (real_tasks[0], twin_tasks[0])
        worker.post(
            (f"/v1/tasks/{first[0]['id']}/complete", f"/v1/tasks/{first[1]['id']}/complete"),
            ({"leaseToken": first[0]["leaseToken"], **done}, {"leaseToken": first[1]["leaseToken"], **done}),
            "done-0",
        )

        def items(tasks: list[dict[str, Any]]) -> dict[str, Any]:
            batch = [
                (f"done-{n}", {"taskId": t["id"], "leaseToken": t["leaseToken"], **done})
                for n, t in enumerate(tasks)
            ]
            batch.append(
                ("stale", {"taskId": tasks[1]["id"], "leaseToken": "not-it", "resultObjectId": "r2"})
            )
            batch.append(("nobody", {"taskId": "task-none", "leaseToken": "x", "resultObjectId": "r3"}))
            batch.append(("bad", {"taskId": tasks[2]["id"], "leaseToken": "x"}))  # no resultObjectId: 422
            return _bulk(batch)

        bulk = "/v1/bulk/completions"
        real, twin = worker.post((bulk, bulk), (items(real_tasks), items(twin_tasks)), None)
        assert _items(real) == _items(twin)
        assert [(s, r, read if s >= 400 else read[0]) for _, s, r, read in _items(real)] == [
            (200, True, "succeeded"),
            (200, False, "succeeded"),
            (200, False, "succeeded"),
            (409, False, "lease-lost"),
            (404, False, "unknown-task"),
            (422, False, "validation-error"),
        ]
