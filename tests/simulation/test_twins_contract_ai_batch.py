"""The AI twin's batch routes answer as AI's do: counts per job, a job's tasks page by page, and
the cancellation of all of a job's tasks. The same calls run against the twin and against the
real service (in process, on the throwaway PostgreSQL); what a caller reads must agree (see
test_twins_contract.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from aijobs_dev.simulation.twins import AITwin

from tests.services.conftest import _in_process
from tests.simulation.test_twins_contract import _now, _slug
from tests.simulation.test_twins_contract import secrets as secrets  # the fixture
from tests.simulation.test_twins_contract_ai_bulk import Both, _bulk, _task

pytestmark = pytest.mark.postgres

STATES = ("total", "scheduled", "running", "succeeded", "failed", "cancelled")


def _counted(counts: dict[str, Any]) -> tuple[Any, ...]:
    """What a follower reads of a job's counts (the times differ between the two: whether
    there is one)."""
    return (counts["jobId"], *(counts[s] for s in STATES), counts["updatedAt"] is not None)


def _read(status: int, body: Any) -> Any:
    """What a caller reads of an answer: the problem's type, or the answer less its times and ids."""
    if status >= 400:
        return (status, _slug(body))
    if "items" in body and "next" in body:  # a page
        tasks = [(t["item"], t["state"], t["cancelRequested"]) for t in body["items"]]
        return (status, body["jobId"], tasks, body["next"])
    if "counts" in body:  # a job's tasks cancelled
        return (status, body["jobId"], body["cancelled"], body["stopping"], _counted(body["counts"]))
    return (status, [_counted(c) for c in body["items"]])


def _get(both: Both, path: str, params: dict[str, Any]) -> tuple[Any, Any]:
    response = both.real.get(path, caller=both.caller, params=params)
    reply = both.twin.handle("GET", path, None, None, {k: str(v) for k, v in params.items()}, b"")
    return _read(response.status_code, response.json()), _read(reply.status, reply.body)


def _post(both: Both, path: str, body: Any, key: str | None) -> tuple[Any, Any]:
    response = both.real.post(path, body, caller=both.caller, key=key)
    reply = both.twin.handle("POST", path, key, body, {}, b"")
    return _read(response.status_code, response.json()), _read(reply.status, reply.body)


def _pages(both: Both, job: str, limit: int) -> list[Any]:
    """Every page of the job's tasks, as each side reads it."""
    pages, params = [], {"limit": limit}
    while True:
        real, twin = _get(both, f"/v1/jobs/{job}/tasks", params)
        assert real == twin
        pages.append(real)
        if real[0] != 200 or real[3] is None:
            return pages
        params = {**params, "after": real[3]}


def _at(minutes_ago: int) -> str:
    return (_now() - dt.timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_ai_twin_counts_pages_and_cancels_a_batch_as_ai_does(
    pg_url: str, secrets: dict[str, str]
) -> None:
    # Run-at times apart, so that both lease the same images first.
    batch = [(f"b{i}", _task("batch", item=i, runAt=_at(50 - i))) for i in range(5)]
    batch.append(("b-own", _task("batch", runAt=_at(10))))  # the job's own task: first in its pages
    for api, _ in _in_process("ai", pg_url, secrets):
        twin = AITwin(_now)
        operator, worker = Both(api, twin, "operator"), Both(api, twin, "worker")
        operator.same("/v1/bulk/tasks", _bulk([*batch, ("o0", _task("other", item=0))]))
        leased_real, leased_twin = worker.same("/v1/leases", {"worker": "w1", "maxTasks": 2}, "lease-1")
        assert (
            [t["item"] for t in leased_real["items"]] == [t["item"] for t in leased_twin["items"]] == [0, 1]
        )
        (done_real, stop_real), (done_twin, stop_twin) = leased_real["items"], leased_twin["items"]
        worker.post(
            (f"/v1/tasks/{done_real['id']}/complete", f"/v1/tasks/{done_twin['id']}/complete"),
            (
                {"leaseToken": done_real["leaseToken"], "resultObjectId": "r0"},
                {"leaseToken": done_twin["leaseToken"], "resultObjectId": "r0"},
            ),
            "done-0",
        )

        counts = {"jobIds": ["batch", "nobody", "batch", "other"]}
        real, twin = _post(worker, "/v1/tasks/counts", counts, None)
        assert real == twin
        assert real[1][0] == ("batch", 6, 4, 1, 1, 0, 0, True)
        assert real[1][1] == ("nobody", 0, 0, 0, 0, 0, 0, False)
        refusals: list[dict[str, Any]] = [{"jobIds": []}, {"jobIds": ["x"] * 1001}, {"jobs": ["batch"]}]
        for refused in refusals:
            real, twin = _post(worker, "/v1/tasks/counts", refused, None)
            assert real == twin == (422, "validation-error")

        pages = _pages(operator, "batch", 4)
        assert [[t[0] for t in page[2]] for page in pages] == [[None, 0, 1, 2], [3, 4]]
        assert [page[3] for page in pages] == [2, None]
        assert _pages(operator, "other", 1) == [(200, "other", [(0, "scheduled", False)], None)]
        assert _pages(operator, "nobody", 500) == [(200, "nobody", [], None)]
        for bad in ({"limit": 0}, {"limit": 1001}, {"after": -2}, {"after": "x"}):
            real, twin = _get(operator, "/v1/jobs/batch/tasks", bad)
            assert real == twin == (422, "validation-error")

        first_real, first_twin = _post(operator, "/v1/jobs/batch/tasks/cancel", None, "cancel-1")
        assert first_real == first_twin == (200, "batch", 4, 1, ("batch", 6, 0, 1, 1, 0, 4, True))
        assert _post(operator, "/v1/jobs/batch/tasks/cancel", None, "cancel-1") == (first_real, first_twin)
        again = _post(operator, "/v1/jobs/batch/tasks/cancel", None, "cancel-2")
        assert again[0] == again[1] == (200, "batch", 0, 0, ("batch", 6, 0, 1, 1, 0, 4, True))
        reused = _post(operator, "/v1/jobs/other/tasks/cancel", None, "cancel-1")
        assert reused[0] == reused[1] == (422, "idempotency-key-reused")
        empty = _post(operator, "/v1/jobs/nobody/tasks/cancel", None, "cancel-3")
        assert empty[0] == empty[1] == (200, "nobody", 0, 0, ("nobody", 0, 0, 0, 0, 0, 0, False))

        # The running image whose cancellation was asked: its worker is refused a result and
        # acknowledges with a failure, as after the single cancel.
        paths = (f"/v1/tasks/{stop_real['id']}", f"/v1/tasks/{stop_twin['id']}")
        tokens = ({"leaseToken": stop_real["leaseToken"]}, {"leaseToken": stop_twin["leaseToken"]})
        result = {"resultObjectId": "r1"}
        refused_real, refused_twin = worker.post(
            (paths[0] + "/complete", paths[1] + "/complete"),
            ({**tokens[0], **result}, {**tokens[1], **result}),
            "done-1",
        )
        assert _slug(refused_real) == _slug(refused_twin) == "task-cancelled"
        ack = {"reason": "cancelled", "retryable": False}
        acked_real, acked_twin = worker.post(
            (paths[0] + "/fail", paths[1] + "/fail"), ({**tokens[0], **ack}, {**tokens[1], **ack}), "fail-1"
        )
        assert acked_real["state"] == acked_twin["state"] == "cancelled"
        real, twin = _post(worker, "/v1/tasks/counts", {"jobIds": ["batch", "other"]}, None)
        assert real == twin == (200, [("batch", 6, 0, 0, 1, 0, 5, True), ("other", 1, 1, 0, 0, 0, 0, True)])
