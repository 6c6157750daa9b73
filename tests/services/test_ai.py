"""AI: one task per job, a lease queue that never hands one task to two workers, fencing of
stale workers, run-at scheduling, cancellation and bulk status."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aijobs_services.ai import queue

from aijobs.api.ai import Leases
from tests.services.conftest import Api, _in_process, snapshot

AI = tuple[Api, sa.Engine]


@pytest.fixture
def ai(pg_url: str, secrets: dict[str, str]) -> Iterator[AI]:
    yield from _in_process("ai", pg_url, secrets)


def _task(job: str = "job-1", **fields: Any) -> dict[str, Any]:
    return {"jobId": job, "account": "acme", "pipeline": "grayscale", "inputObjectId": "obj-1", **fields}


def _create(api: Api, job: str = "job-1", key: str | None = None, **fields: Any) -> httpx.Response:
    return api.post("/v1/tasks", _task(job, **fields), caller="operator", key=key or f"{job}:schedule")


def _lease(api: Api, worker: str = "w1", n: int = 1, key: str | None = None) -> list[dict[str, Any]]:
    response = api.post(
        "/v1/leases",
        {"worker": worker, "maxTasks": n, "leaseSeconds": 30},
        caller="worker",
        key=key or "auto",
    )
    assert response.status_code == 200, response.text
    Leases.model_validate_json(response.content)  # what a worker reads: the wire model, whole
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_a_job_gets_one_task_however_often_it_is_scheduled(ai: AI) -> None:
    api, engine = ai
    first = _create(api)
    assert first.status_code == 201
    assert _create(api).json() == first.json()  # the same key: a replay
    again = _create(api, key="another-key")  # another key, same definition: the same task
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    before = snapshot(engine)
    different = _create(api, key="third-key", pipeline="thumbnail")
    assert different.status_code == 409 and different.json()["taskId"] == first.json()["id"]
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    ("fields", "kind", "says"),
    [
        pytest.param(
            {"pipeline": "mine-bitcoin"}, "unknown-pipeline", "known pipelines: upscale-x2", id="pipeline"
        ),
        pytest.param(
            {"pipeline": "resize", "params": {"width": 10}}, "bad-parameters", "height", id="missing-param"
        ),
        pytest.param(
            {"pipeline": "grayscale", "params": {"gamma": 2}}, "bad-parameters", "gamma", id="unknown-param"
        ),
        pytest.param({"runAt": "tomorrow"}, "validation-error", "body.runAt", id="run-at-format"),
        pytest.param({"account": "Not An Account"}, "validation-error", "body.account", id="account"),
        pytest.param({"runAt": 0}, "validation-error", "body.runAt", id="run-at-as-a-number"),
        pytest.param(  # a date-time the schema admits, but year 0 in UTC
            {"runAt": "0001-01-01T00:30:00+01:00"}, "time-out-of-range", "body.runAt", id="run-at-year-0"
        ),
        pytest.param({"inputObjectId": "obj\u0000"}, "validation-error", "body.inputObjectId", id="nul"),
    ],
)
def test_a_bad_task_is_refused_with_a_clear_reason(
    ai: AI, fields: dict[str, Any], kind: str, says: str
) -> None:
    api, engine = ai
    before = snapshot(engine)
    response = _create(api, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith(f"/{kind}") and says in response.json()["detail"]
    assert snapshot(engine) == before


def test_a_task_waits_for_its_run_at(ai: AI) -> None:
    api, _ = ai
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)).isoformat()
    _create(api, "job-later", runAt=later)
    _create(api, "job-now")
    assert [t["jobId"] for t in _lease(api, n=10)] == ["job-now"]


def test_an_expired_lease_is_taken_over_and_the_stale_worker_is_fenced_off(ai: AI) -> None:
    api, engine = ai
    task_id = _create(api).json()["id"]
    [stale] = _lease(api, "worker-a")
    with engine.begin() as conn:  # worker-a stalls past its lease
        conn.execute(sa.text("update tasks set lease_expires_at = now() - interval '1 second'"))
    [fresh] = _lease(api, "worker-b")
    assert fresh["id"] == task_id and fresh["attempts"] == 2 and fresh["reruns"] == 1
    late = api.post(
        f"/v1/tasks/{task_id}/complete",
        {"leaseToken": stale["leaseToken"], "resultObjectId": "obj-a"},
        caller="worker",
    )
    assert late.status_code == 409 and late.json()["type"].endswith("/lease-lost")
    lost_heartbeat = api.post(
        f"/v1/tasks/{task_id}/heartbeat", {"leaseToken": stale["leaseToken"]}, caller="worker", key=None
    )
    assert lost_heartbeat.status_code == 409
    done = api.ok(
        "POST",
        f"/v1/tasks/{task_id}/complete",
        {"leaseToken": fresh["leaseToken"], "resultObjectId": "obj-b"},
        caller="worker",
    )
    assert done["state"] == "succeeded" and done["resultObjectId"] == "obj-b"
    retried = api.ok(
        "POST",
        f"/v1/tasks/{task_id}/complete",
        {"leaseToken": fresh["leaseToken"], "resultObjectId": "obj-b"},
        caller="worker",
    )
    assert retried["state"] == "succeeded"


def test_a_lost_lease_response_is_replayed_not_leased_twice(ai: AI) -> None:
    api, _ = ai
    _create(api, "job-1")
    _create(api, "job-2")
    first = _lease(api, n=1, key="lease-1")
    assert _lease(api, n=1, key="lease-1") == first  # the retry gets the same task and token
    second = _lease(api, n=1, key="lease-2")
    assert second[0]["id"] != first[0]["id"]


def test_cancel_stops_a_scheduled_task_and_tells_a_running_one(ai: AI) -> None:
    api, _ = ai
    scheduled = _create(api, "job-1").json()
    assert api.ok("POST", f"/v1/tasks/{scheduled['id']}/cancel", caller="operator")["state"] == "cancelled"
    running_id = _create(api, "job-2").json()["id"]
    [lease] = _lease(api)
    assert lease["id"] == running_id
    assert api.ok("POST", f"/v1/tasks/{running_id}/cancel", caller="operator")["cancelRequested"] is True
    beat = api.ok(
        "POST",
        f"/v1/tasks/{running_id}/heartbeat",
        {"leaseToken": lease["leaseToken"]},
        caller="worker",
        key=None,
    )
    assert beat["cancelRequested"] is True
    refused = api.post(
        f"/v1/tasks/{running_id}/complete",
        {"leaseToken": lease["leaseToken"], "resultObjectId": "obj-x"},
        caller="worker",
    )
    assert refused.status_code == 409 and refused.json()["type"].endswith("/task-cancelled")
    acked = api.ok(
        "POST",
        f"/v1/tasks/{running_id}/fail",
        {"leaseToken": lease["leaseToken"], "reason": "cancelled", "retryable": False},
        caller="worker",
    )
    assert acked["state"] == "cancelled"
    assert _lease(api, n=10) == []


def test_a_retryable_failure_requeues_and_a_final_one_fails(ai: AI) -> None:
    api, _ = ai
    task_id = _create(api, maxAttempts=2).json()["id"]
    [lease] = _lease(api)
    retry = api.ok(
        "POST",
        f"/v1/tasks/{task_id}/fail",
        {"leaseToken": lease["leaseToken"], "reason": "CUDA OOM", "retryable": True},
        caller="worker",
    )
    assert retry["state"] == "scheduled"
    final = _create(api, "job-2").json()["id"]
    [lease2] = _lease(api)
    assert lease2["id"] == final  # the requeued task waits out its backoff
    bad = api.ok(
        "POST",
        f"/v1/tasks/{final}/fail",
        {"leaseToken": lease2["leaseToken"], "reason": "corrupt image", "retryable": False},
        caller="worker",
    )
    assert bad["state"] == "failed" and bad["error"] == "corrupt image"


def test_many_task_states_come_back_in_one_call(ai: AI) -> None:
    api, _ = ai
    for i in range(50):
        _create(api, f"job-{i}")
    items = api.ok(
        "POST",
        "/v1/tasks/query",
        {"jobIds": [f"job-{i}" for i in range(0, 50, 2)] + ["nope"]},
        caller="operator",
        key=None,
    )["items"]
    assert sorted(t["jobId"] for t in items) == sorted(f"job-{i}" for i in range(0, 50, 2))
    assert {t["state"] for t in items} == {"scheduled"}


def test_workers_racing_for_tasks_never_share_one(pg_url: str, service_process: Any, secrets: Any) -> None:
    proc = service_process("ai", pg_url, workers=2)
    api = Api(httpx.Client(base_url=proc.url), "ai", secrets)
    for i in range(30):
        assert _create(api, f"job-{i}").status_code == 201

    async def race() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:

            async def one(w: int) -> list[str]:
                body = {"worker": f"w{w}", "maxTasks": 3, "leaseSeconds": 60}
                response = await http.post(
                    "/v1/leases", json=body, headers=api.headers("worker", f"lease-{w}")
                )
                assert response.status_code == 200, response.text
                return [t["id"] for t in response.json()["items"]]

            return await asyncio.gather(*(one(w) for w in range(16)))

    leased = [task for batch in asyncio.run(race()) for task in batch]
    assert len(leased) == len(set(leased)) == 30


def test_a_worker_with_an_identity_of_its_own_leases_under_it_whatever_name_it_sends(
    pg_url: str, secrets: dict[str, str]
) -> None:
    secrets = {**secrets, "worker.gpu-1": "a-secret-of-gpu-1-that-is-long-enough!"}
    for api, _ in _in_process("ai", pg_url, secrets):
        _create(api, "job-own")
        leased = api.post(
            "/v1/leases",
            {"worker": "gpu-2", "maxTasks": 1, "leaseSeconds": 30},
            caller="worker.gpu-1",
            key="lease-own",
        ).json()["items"]
        assert [t["leaseOwner"] for t in leased] == ["worker.gpu-1"]  # not the name it claimed
        _create(api, "job-shared")
        shared = _lease(api, worker="gpu-2")
        assert [t["leaseOwner"] for t in shared] == ["worker/gpu-2"]  # a label, marked as such
        outsider = api.post("/v1/leases", {"worker": "x"}, caller="main-api", key="lease-outsider")
        assert outsider.status_code == 403


def test_the_queue_depth_an_autoscaler_reads_counts_waiting_running_and_later_work(ai: AI) -> None:
    api, engine = ai

    def depth() -> dict[str, int]:
        response = api.get("/v1/queue/depth", caller=None)  # KEDA holds no service token
        assert response.status_code == 200, response.text
        return dict(response.json())

    assert depth() == {"ready": 0, "running": 0, "scheduled": 0, "demand": 0}
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)).isoformat()
    _create(api, "job-later", runAt=later)
    for job in ("job-a", "job-b", "job-c"):
        _create(api, job)
    cancelled = _create(api, "job-cancelled").json()["id"]
    api.ok("POST", f"/v1/tasks/{cancelled}/cancel", caller="operator")
    assert depth() == {"ready": 3, "running": 0, "scheduled": 1, "demand": 3}

    [first, _] = _lease(api, "w1", n=2)
    assert depth() == {"ready": 1, "running": 2, "scheduled": 1, "demand": 3}  # still work to serve
    api.ok(
        "POST",
        f"/v1/tasks/{first['id']}/complete",
        {"leaseToken": first["leaseToken"], "resultObjectId": "obj-r"},
        caller="worker",
    )
    assert depth() == {"ready": 1, "running": 1, "scheduled": 1, "demand": 2}
    with engine.begin() as conn:  # the other worker vanished: its task is due again
        conn.execute(sa.text("update tasks set lease_expires_at = now() - interval '1 second'"))
    assert depth() == {"ready": 2, "running": 0, "scheduled": 1, "demand": 2}
    assert len(_lease(api, "w2", n=10)) == 2  # exactly what the depth said was ready


# ------------------------------------------------------------------------------------- bulk
def _bulk(api: Api, route: str, items: list[tuple[str, dict[str, Any]]], caller: str) -> list[dict[str, Any]]:
    body = {"items": [{"key": key, "request": request} for key, request in items]}
    response = api.post(f"/v1/bulk/{route}", body, caller=caller, key=None)
    assert response.status_code == 200, response.text
    answers: list[dict[str, Any]] = response.json()["items"]
    assert [a["key"] for a in answers] == [key for key, _ in items]  # in the order sent
    return answers


def _slug_of(answer: dict[str, Any]) -> str:
    return str(answer["body"]["type"]).rsplit("/", 1)[-1]


def test_a_bulk_creation_is_each_single_creation_under_its_own_key(ai: AI) -> None:
    api, engine = ai
    earlier = _create(api, "job-0", key="k0")  # sent alone before: the bulk item replays it
    items = [
        ("k0", _task("job-0")),
        ("k1", _task("job-1")),
        ("k2", _task("job-0", pipeline="thumbnail")),  # job-0 has a task with another definition
        ("k3", _task("job-3", runAt="tomorrow")),  # a body the single route refuses
        ("k4", _task("job-1")),  # job-1 again, another key: its task, as the single route answers
    ]
    answers = _bulk(api, "tasks", items, "operator")
    assert [(a["status"], a["replayed"]) for a in answers] == [
        (201, True),
        (201, False),
        (409, False),
        (422, False),
        (200, False),
    ]
    assert answers[0]["body"] == earlier.json()
    assert answers[2]["body"]["taskId"] == earlier.json()["id"] and _slug_of(answers[2]) == "job-has-task"
    assert _slug_of(answers[3]) == "validation-error" and "body.runAt" in answers[3]["body"]["detail"]
    assert answers[4]["body"] == answers[1]["body"]  # its task as it is, written as the first answer was
    # A single call with an item's key is that item: replayed, with the item's answer.
    single = _create(api, "job-1", key="k1")
    assert single.status_code == 201 and single.headers["Idempotent-Replayed"] == "true"
    assert single.json() == answers[1]["body"]
    # The lost answer of a bulk request: sent again, every stored item replays, nothing moves.
    before = snapshot(engine)
    again = _bulk(api, "tasks", items, "operator")
    assert [(a["status"], a["body"]) for a in again] == [(a["status"], a["body"]) for a in answers]
    assert [a["replayed"] for a in again] == [True, True, True, False, True]
    assert snapshot(engine) == before
    # An item's key used for another body is refused for that item only.
    [reused] = _bulk(api, "tasks", [("k1", _task("job-9"))], "operator")
    assert (reused["status"], _slug_of(reused)) == (422, "idempotency-key-reused")


def test_a_batch_job_has_one_task_per_image(ai: AI) -> None:
    api, _ = ai
    items = [(f"b:{i}", _task("batch-1", item=i)) for i in range(5)] + [("b:single", _task("batch-1"))]
    answers = _bulk(api, "tasks", items, "operator")
    assert [a["status"] for a in answers] == [201] * 6
    assert [a["body"]["item"] for a in answers] == [0, 1, 2, 3, 4, None]
    assert len({a["body"]["id"] for a in answers}) == 6
    clash = _create(api, "batch-1", key="b:2:again", item=2, pipeline="thumbnail")
    assert clash.status_code == 409 and clash.json()["taskId"] == answers[2]["body"]["id"]
    listed = api.ok("POST", "/v1/tasks/query", {"jobIds": ["batch-1"]}, caller="operator", key=None)["items"]
    assert sorted((t["item"] is None, t["item"]) for t in listed) == [
        (False, 0),
        (False, 1),
        (False, 2),
        (False, 3),
        (False, 4),
        (True, None),
    ]


def test_an_item_that_fails_unexpectedly_is_answered_alone_and_the_others_commit(
    ai: AI, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = ai

    real_create, real_quick = queue.create, queue.quick_create

    def broken(session: Any, **fields: Any) -> Any:
        if fields["job_id"] == "job-bad":
            session.execute(sa.text("SELECT 1"))  # it had started talking to the database
            raise RuntimeError("a bug")
        return real_create(session, **fields)

    def portable_for_the_bad_one(claim: Any, answer: Any, **fields: Any) -> Any:
        return None if fields["job_id"] == "job-bad" else real_quick(claim, answer, **fields)

    with monkeypatch.context() as patched:  # a bug in the portable path, for one job
        patched.setattr(queue, "create", broken)
        patched.setattr(queue, "quick_create", portable_for_the_bad_one)
        answers = _bulk(api, "tasks", [("g1", _task("job-good")), ("x1", _task("job-bad"))], "operator")
    assert [a["status"] for a in answers] == [201, 500]
    assert _create(api, "job-good", key="g1").json() == answers[0]["body"]  # committed
    retried = _create(api, "job-bad", key="x1")  # its key was not kept: the retry acts
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers


def test_a_worker_completes_a_leased_batch_in_one_request(ai: AI) -> None:
    api, _ = ai
    for i in range(3):
        _create(api, f"job-{i}")
    leased = _lease(api, n=3)
    done = {"resultObjectId": "obj-r", "result": {"size": 1}}
    first = leased[0]
    alone = api.post(
        f"/v1/tasks/{first['id']}/complete",
        {"leaseToken": first["leaseToken"], **done},
        caller="worker",
        key=f"{first['id']}:complete",
    )
    assert alone.status_code == 200
    items = [
        (f"{t['id']}:complete", {"taskId": t["id"], "leaseToken": t["leaseToken"], **done}) for t in leased
    ]
    stale = {"taskId": leased[1]["id"], "leaseToken": "not-the-token", "resultObjectId": "obj-other"}
    items.append(("stale", stale))
    answers = _bulk(api, "completions", items, "worker")
    assert [(a["status"], a["replayed"]) for a in answers] == [
        (200, True),
        (200, False),
        (200, False),
        (409, False),
    ]
    assert answers[0]["body"] == alone.json()
    assert _slug_of(answers[3]) == "lease-lost" and answers[3]["body"]["state"] == "succeeded"
    now = [api.ok("GET", f"/v1/tasks/{t['id']}") for t in leased]
    assert {t["state"] for t in now} == {"succeeded"}
    assert [a["body"] for a in answers[:3]] == now  # each answer written as the task reads
    refused = api.post("/v1/bulk/completions", {"items": items}, caller="operator", key=None)
    assert refused.status_code == 403  # completions are the workers'
