"""AI for batch jobs (one task per image): counts per job, a job's tasks page by page in the
images' order, and the cancellation of all of a job's tasks, each as its single cancel."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.ai import queue
from aijobs_services.ai.models import Task as TaskRow
from sqlalchemy.orm import Session

from aijobs.api import tasks
from aijobs.api.ai import JobTasksCancelled, TaskCounts, TaskPage
from tests.services.conftest import Api, _in_process, snapshot

# SQLite's reflection (of the snapshots) cannot read the unique index on an expression.
pytestmark = pytest.mark.filterwarnings("ignore:Skipped unsupported reflection:sqlalchemy.exc.SAWarning")

AI = tuple[Api, sa.Engine]
STATES = ("scheduled", "running", "succeeded", "failed", "cancelled")


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def ai(request: pytest.FixtureRequest, secrets: dict[str, str], tmp_path: Path) -> Iterator[AI]:
    """The service on PostgreSQL and on SQLite (the demo's): both must answer alike."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'ai.db'}"
    yield from _in_process("ai", url, secrets)


def _task(job: str, item: int | None) -> dict[str, Any]:
    body = {"jobId": job, "account": "acme", "pipeline": "grayscale", "inputObjectId": "obj-1"}
    return body if item is None else {**body, "item": item}


def _batch(api: Api, job: str, items: list[int]) -> list[dict[str, Any]]:
    """The job's tasks for these images, created through the bulk route, 400 a request (the
    test's services take bodies of 64 KiB)."""
    created = []
    for start in range(0, len(items), 400):
        chunk = items[start : start + 400]
        answer = api.ok(
            "POST",
            "/v1/bulk/tasks",
            {"items": [{"key": f"{job}:{i}", "request": _task(job, i)} for i in chunk]},
            caller="operator",
            key=None,
        )
        assert [a["status"] for a in answer["items"]] == [201] * len(chunk)
        created += [a["body"] for a in answer["items"]]
    return created


def _lease(api: Api, n: int) -> list[dict[str, Any]]:
    leased: list[dict[str, Any]] = api.ok(
        "POST", "/v1/leases", {"worker": "w1", "maxTasks": n, "leaseSeconds": 60}, caller="worker"
    )["items"]
    assert len(leased) == n
    return leased


def _counts(api: Api, *jobs: str, caller: str = "operator") -> list[dict[str, Any]]:
    response = api.post("/v1/tasks/counts", {"jobIds": list(jobs)}, caller=caller, key=None)
    assert response.status_code == 200, response.text
    TaskCounts.model_validate_json(response.content)  # what the operator reads: the model, whole
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _tally(counts: dict[str, Any]) -> tuple[int, ...]:
    return (counts["total"], *(counts[state] for state in STATES))


def _page(api: Api, job: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job}/tasks", caller="operator", params=params)
    assert response.status_code == 200, response.text
    TaskPage.model_validate_json(response.content)
    page: dict[str, Any] = response.json()
    return page


def _cancel(api: Api, job: str, key: str | None) -> httpx.Response:
    return api.post(f"/v1/jobs/{job}/tasks/cancel", caller="operator", key=key)


def test_counts_follow_a_batch_through_its_tasks_life_cycle(ai: AI) -> None:
    api, _ = ai
    _batch(api, "batch", list(range(6)))
    _batch(api, "other", [0])
    [fresh] = _counts(api, "batch")
    assert _tally(fresh) == (6, 6, 0, 0, 0, 0)
    done, failing, stopping = _lease(api, 3)
    for lease in (done, failing, stopping):
        assert lease["jobId"] == "batch"  # the earliest run-at first: the batch's
    token = {"leaseToken": done["leaseToken"]}
    result = {"resultObjectId": "r-1", "result": {"size": [2, 3], "scale": 1.5, "note": "gris é"}}
    api.ok("POST", f"/v1/tasks/{done['id']}/complete", token | result, caller="worker")
    failed = {"leaseToken": failing["leaseToken"], "reason": "broken image", "retryable": False}
    api.ok("POST", f"/v1/tasks/{failing['id']}/fail", failed, caller="worker")
    asked = api.ok("POST", f"/v1/tasks/{stopping['id']}/cancel", caller="operator")
    assert (asked["state"], asked["cancelRequested"]) == ("running", True)
    scheduled = [t for t in _page(api, "batch")["items"] if t["state"] == "scheduled"]
    api.ok("POST", f"/v1/tasks/{scheduled[0]['id']}/cancel", caller="operator")

    first, unknown, again, other = _counts(api, "batch", "nobody", "batch", "other", caller="main-api")
    # A running task whose cancellation was asked is still running: its worker has not stopped.
    assert _tally(first) == (6, 2, 1, 1, 1, 1)
    assert again == first and first["jobId"] == "batch"
    latest = max(dt.datetime.fromisoformat(t["updatedAt"]) for t in _page(api, "batch")["items"])
    assert dt.datetime.fromisoformat(first["updatedAt"]) == latest
    assert unknown == {"jobId": "nobody", "total": 0, **dict.fromkeys(STATES, 0), "updatedAt": None}
    assert _tally(other) == (1, 1, 0, 0, 0, 0)
    # A page shows each task as its own read does, in every state (the page is read another way),
    # a result and parameters with it, and a single job's task (no item) too.
    resized = {**_task("single", None), "pipeline": "resize", "params": {"width": 64, "height": 32}}
    api.ok("POST", "/v1/tasks", resized, caller="operator")
    listed = _page(api, "batch")["items"]
    assert {t["state"] for t in listed} == {"scheduled", "running", "succeeded", "failed", "cancelled"}
    [single] = _page(api, "single")["items"]
    assert single["item"] is None and single["params"] == {"width": 64, "height": 32, "antialias": True}
    assert [t["result"] for t in listed if t["state"] == "succeeded"] == [result["result"]]
    for task in [*listed, single]:
        assert task == api.get(f"/v1/tasks/{task['id']}", caller="operator").json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"jobIds": []}, 422, id="no-job"),
        pytest.param({"jobIds": [f"job-{n}" for n in range(1001)]}, 422, id="over-1000"),
        pytest.param({"jobIds": ["job\u0000"]}, 422, id="nul"),
        pytest.param({"jobIds": ["job-1"], "taskIds": []}, 422, id="unknown-field"),
    ],
)
def test_counts_refuse_what_the_contract_does_not_take(ai: AI, body: dict[str, Any], status: int) -> None:
    api, _ = ai
    response = api.post("/v1/tasks/counts", body, caller="operator", key=None)
    assert response.status_code == status, response.text
    assert response.json()["type"].endswith("/validation-error")
    assert api.post("/v1/tasks/counts", {"jobIds": ["j"]}, caller=None, key=None).status_code == 401


def test_paging_through_a_batch_returns_every_image_once_in_order(ai: AI) -> None:
    api, _ = ai
    images = list(range(2500))
    random.Random(7).shuffle(images)  # created in no particular order
    created = _batch(api, "batch", images)
    api.ok("POST", "/v1/tasks", _task("batch", None), caller="operator")  # the job's own task
    _batch(api, "other", [0, 1])
    seen: list[int | None] = []
    sizes, params = [], {"limit": 1000}
    while True:
        page = _page(api, "batch", **params)
        assert page["jobId"] == "batch" and all(t["jobId"] == "batch" for t in page["items"])
        seen += [t["item"] for t in page["items"]]
        sizes.append(len(page["items"]))
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["item"]
        params = {**params, "after": page["next"]}
    assert seen == [None, *range(2500)]  # the single-image task first (-1), then by index
    assert sizes == [1000, 1000, 501]
    ids = {t["id"] for t in created}
    assert {t["id"] for t in _page(api, "batch", after=-1, limit=1000)["items"]} <= ids
    # A last page that is exactly full says it is the last.
    exact = _page(api, "other", limit=2)
    assert ([t["item"] for t in exact["items"]], exact["next"]) == ([0, 1], None)
    assert _page(api, "nobody") == {"jobId": "nobody", "items": [], "next": None}
    assert len(_page(api, "batch")["items"]) == 500  # the default limit
    assert _page(api, "batch", after=2498)["items"][0]["item"] == 2499


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 1001}, id="limit-over-1000"),
        pytest.param({"after": -2}, id="after-below-the-first"),
        pytest.param({"after": "one"}, id="after-not-a-number"),
    ],
)
def test_paging_refuses_bounds_it_does_not_take(ai: AI, params: dict[str, Any]) -> None:
    api, _ = ai
    response = api.get("/v1/jobs/batch/tasks", caller="operator", params=params)
    assert response.status_code == 422 and response.json()["type"].endswith("/validation-error")


def test_cancelling_a_batch_cancels_each_task_as_its_single_cancel_does(ai: AI) -> None:
    api, engine = ai
    _batch(api, "batch", list(range(6)))
    _batch(api, "other", [0])
    done, running, acknowledging = _lease(api, 3)
    token = {"leaseToken": done["leaseToken"]}
    api.ok("POST", f"/v1/tasks/{done['id']}/complete", {**token, "resultObjectId": "r-1"}, caller="worker")

    first = _cancel(api, "batch", "cancel-batch")
    assert first.status_code == 200, first.text
    answer = JobTasksCancelled.model_validate_json(first.content)
    assert (answer.job_id, answer.cancelled, answer.stopping) == ("batch", 3, 2)
    assert _tally(first.json()["counts"]) == (6, 0, 2, 1, 0, 3)
    assert first.json()["counts"] == _counts(api, "batch")[0]
    assert _tally(_counts(api, "other")[0]) == (1, 1, 0, 0, 0, 0)  # another job's tasks stay

    before = snapshot(engine)
    replay = _cancel(api, "batch", "cancel-batch")
    assert replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert snapshot(engine) == before
    again = _cancel(api, "batch", "cancel-batch-again").json()  # another key: nothing left to do
    assert (again["cancelled"], again["stopping"]) == (0, 0)
    assert snapshot(engine) == before

    # A worker whose task's cancellation was asked hears it and stops, as with the single cancel.
    lease = {"leaseToken": acknowledging["leaseToken"]}
    beat = api.ok("POST", f"/v1/tasks/{acknowledging['id']}/heartbeat", lease, caller="worker", key=None)
    assert beat["cancelRequested"] is True
    refused = api.post(
        f"/v1/tasks/{acknowledging['id']}/complete", {**lease, "resultObjectId": "r-2"}, caller="worker"
    )
    assert refused.status_code == 409 and refused.json()["type"].endswith("/task-cancelled")
    acked = {**lease, "reason": "cancelled", "retryable": False}
    assert api.ok("POST", f"/v1/tasks/{acknowledging['id']}/fail", acked, caller="worker")["state"] == (
        "cancelled"
    )
    assert _tally(_counts(api, "batch")[0]) == (6, 0, 1, 1, 0, 4)
    still = api.ok("GET", f"/v1/tasks/{running['id']}", caller="operator")
    assert (still["state"], still["cancelRequested"]) == ("running", True)  # until its worker stops
    assert [t["jobId"] for t in _lease(api, 1)] == ["other"]  # a cancelled batch is never leased


def test_cancelling_a_job_without_tasks_answers_zeros(ai: AI) -> None:
    api, engine = ai
    before = snapshot(engine)
    response = _cancel(api, "nobody", "cancel-nobody")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "jobId": "nobody",
        "cancelled": 0,
        "stopping": 0,
        "counts": {"jobId": "nobody", "total": 0, **dict.fromkeys(STATES, 0), "updatedAt": None},
    }
    assert snapshot(engine) == before


def test_cancelling_a_job_takes_the_operator_and_a_key(ai: AI) -> None:
    api, _ = ai
    missing = _cancel(api, "batch", None)
    assert missing.status_code == 400 and missing.json()["type"].endswith("/idempotency-key-missing")
    assert api.post("/v1/jobs/batch/tasks/cancel", caller="worker").status_code == 403
    assert api.post("/v1/jobs/batch/tasks/cancel", caller="main-api").status_code == 403


def test_the_bulk_cancel_in_sql_says_what_the_single_cancel_rule_says(ai: AI) -> None:
    """Each state a task may be in (and a cancel already asked), cancelled in bulk, ends as
    :func:`aijobs.api.tasks.cancel` leaves it, and the answer counts what the rule did."""
    _, engine = ai
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    earlier = dt.datetime(2029, 1, 1, tzinfo=dt.UTC)
    cases = [(state, asked) for state in STATES for asked in (False, True)]
    with Session(engine) as session, session.begin():
        for n, (state, asked) in enumerate(cases):
            held = state == "running"
            session.add(
                TaskRow(
                    id=f"task-{n}",
                    job_id="batch",
                    item=n,
                    account="acme",
                    pipeline="grayscale",
                    params={},
                    input_object_id="obj-1",
                    run_at=earlier,
                    state=state,
                    attempts=1,
                    max_attempts=5,
                    reruns=0,
                    cancel_requested=asked,
                    lease_token="token" if held else None,
                    lease_owner="worker/w1" if held else None,
                    lease_expires_at=now + dt.timedelta(minutes=1) if held else None,
                    created_at=earlier,
                    updated_at=earlier,
                )
            )
    with Session(engine) as session, session.begin():
        before = [queue.get(session, f"task-{n}") for n in range(len(cases))]
        answer = queue.cancel_job(session, "batch", now=now)
    with Session(engine) as session, session.begin():
        after = [queue.get(session, f"task-{n}") for n in range(len(cases))]
    expected = [tasks.cancel(task, now=now) for task in before]
    assert after == expected
    moved = [(b.state, e.state) for b, e in zip(before, expected, strict=True) if b != e]
    assert answer.cancelled == moved.count(("scheduled", "cancelled")) == 1
    assert answer.stopping == moved.count(("running", "running")) == 1
    assert answer.counts.total == len(cases)
