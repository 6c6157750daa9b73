"""The saga end to end: a user's job is delivered and charged once, or fails and costs nothing,
whatever the services, the network or the operator do."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
from aijobs_dev.testbed.stack import Stack, Tenant
from PIL import Image

from tests.e2e.conftest import QUOTA, Jobs, eventually, live, manifest, png, reason


def _uid(job: dict[str, Any]) -> str:
    return str(job["metadata"]["uid"])


def _writes_to(audit_log: Any, name: str) -> int:
    """The API writes made for the job ``name``: to the object (and its status), and its Events."""
    count = 0
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if entry["user"]["username"] == "":
            continue
        if ref.get("name") == name and entry["verb"] in ("patch", "update"):
            count += 1
        elif ref.get("resource") == "events" and (ref.get("name") or "").startswith(f"{name}."):
            count += entry["verb"] == "create"
    return count


def test_a_job_applied_with_kubectl_is_delivered_and_charged_exactly_once(
    stack: Stack, tenant: Tenant, jobs: Jobs, control_plane: Any
) -> None:
    jobs.apply(manifest("upscale", tenant.account, image=png(24, 16), price=10))
    jobs.kubectl("wait", "--for=condition=Complete", "aij/upscale", "--timeout=90s")
    job = jobs.get("upscale")
    assert job is not None and job["status"]["phase"] == "Delivered"
    result = httpx.get(job["status"]["result"]["url"], timeout=10)  # a signed link: no token
    assert Image.open(io.BytesIO(result.content)).size == (48, 32)
    assert stack.balance(tenant.account) == {"id": tenant.account, "available": 90, "held": 0, "balance": 90}
    records = stack.job_records(_uid(job))
    assert [h["state"] for h in records["charges"]["holds"]] == ["captured"]
    assert records["charges"]["charged"] == 10
    assert sorted(o["kind"] for o in live(records["objects"])) == ["input", "result"]
    assert [t["state"] for t in records["tasks"]] == ["succeeded"]
    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert (
        conditions
        | {
            "Complete": "True",
            "Failed": "False",
            "Charged": "True",
            "Uploaded": "True",
            "Scheduled": "True",
            "Processed": "True",
            "Delivered": "True",
        }
        == conditions
    )
    # The conditions tell the story; a pass that went as planned is not worth an Event.
    described = jobs.kubectl("describe", "aij", "upscale").stdout
    for condition in ("Charged", "Uploaded", "Scheduled", "Processed", "Delivered"):
        assert condition in described
    # The finalizer, the log after the first pass, capture's write-ahead, the delivered log.
    assert _writes_to(control_plane.audit_log, "upscale") <= 4


def test_main_api_takes_an_upload_and_gives_back_a_result_link(stack: Stack, tenant: Tenant) -> None:
    main = stack.services["main"].url
    auth = {"Authorization": f"Bearer {tenant.token}"}
    files = {"file": ("cat.png", png(20, 20), "image/png")}
    form = {"pipeline": "grayscale"}
    submitted = httpx.post(
        f"{main}/v1/jobs", headers=auth | {"Idempotency-Key": "first"}, data=form, files=files
    )
    assert submitted.status_code == 201, submitted.text
    again = httpx.post(f"{main}/v1/jobs", headers=auth | {"Idempotency-Key": "first"}, data=form, files=files)
    assert again.status_code == 200 and again.json()["id"] == submitted.json()["id"]
    job_id = submitted.json()["id"]

    def delivered() -> Any:
        view = httpx.get(f"{main}/v1/jobs/{job_id}", headers=auth).json()
        return view if view["phase"] == "Delivered" else None

    view = eventually(delivered, 60, "delivery")
    picture = Image.open(io.BytesIO(httpx.get(view["resultUrl"]).content))
    assert picture.size == (20, 20) and picture.mode == "RGB"
    listing = httpx.get(f"{main}/v1/jobs", headers=auth).json()
    assert [j["id"] for j in listing["items"]] == [job_id]
    admin = stack.admin("main")
    story = admin.get(f"/v1/admin/jobs/{tenant.namespace}/{job_id}").json()
    assert story["disagreements"] == [] and story["services"]["payment"]["charged"] == 1
    other = stack.tenant(f"o{tenant.account}", credits=0)
    stranger = httpx.get(f"{main}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other.token}"})
    assert stranger.status_code == 404
    assert httpx.get(f"{main}/v1/jobs", headers={"Authorization": "Bearer aij_nope_nope"}).status_code == 401
    bad = httpx.post(
        f"{main}/v1/jobs",
        headers=auth | {"Idempotency-Key": "k2"},
        data={"pipeline": "teleport"},
        files=files,
    )
    assert bad.status_code == 422 and "known pipelines" in bad.json()["detail"]


def _nothing_left(stack: Stack, job: dict[str, Any], tenant: Tenant, credits: int = 100) -> None:
    assert stack.balance(tenant.account) == {
        "id": tenant.account,
        "available": credits,
        "held": 0,
        "balance": credits,
    }
    records = stack.job_records(_uid(job))
    assert records["charges"]["charged"] == 0
    assert all(h["state"] in ("released", "expired") for h in records["charges"]["holds"])
    assert live(records["objects"]) == []
    assert all(t["state"] in ("cancelled", "failed") for t in records["tasks"])


def test_scenario_1_storage_full_at_upload_fails_the_job_and_releases_the_hold(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    big = png(200, 200, noise=True)
    assert len(big) > QUOTA
    jobs.apply(manifest("too-big", tenant.account, image=big))
    job = jobs.wait("too-big")
    assert job["status"]["phase"] == "Failed" and reason(job) == "StorageFull"
    assert "quota" in job["status"]["message"]
    steps = {s["name"]: s["state"] for s in job["status"]["steps"]}
    assert steps == {"charge": "Succeeded", "upload": "Failed"}
    assert {c["name"] for c in job["status"]["compensations"]} == {
        "cancel-task",
        "delete-objects",
        "release-holds",
    }
    _nothing_left(stack, job, tenant)
    assert stack.job_records(_uid(job))["tasks"] == []


def test_insufficient_credits_fail_at_the_charge_and_cost_nothing(stack: Stack, jobs: Jobs) -> None:
    poor = stack.tenant(f"p{jobs.namespace[:8]}", credits=5)
    poor_jobs = Jobs(stack, poor.namespace)
    poor_jobs.apply(manifest("pricey", poor.account, price=10))
    job = poor_jobs.wait("pricey")
    assert reason(job) == "InsufficientCredits" and "5 credits available" in job["status"]["message"]
    _nothing_left(stack, job, poor, credits=5)
    poor_jobs.kubectl("wait", "--for=condition=Failed", "aij/pricey", "--timeout=10s")


def test_a_namespace_cannot_spend_another_tenants_credits(stack: Stack, tenant: Tenant) -> None:
    intruder = stack.tenant(f"i{tenant.account[:8]}", credits=0)
    their = Jobs(stack, intruder.namespace)
    their.apply(manifest("steal", tenant.account))  # names the victim's account
    job = their.wait("steal")
    assert reason(job) == "TenantNotAllowed"
    assert stack.balance(tenant.account)["available"] == 100
    assert stack.job_records(_uid(job))["charges"]["holds"] == []


def test_a_bad_image_fails_at_the_upload_and_costs_nothing(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    body = manifest("garbage", tenant.account)
    body["spec"]["input"]["inline"]["data"] = "aGVsbG8sIEkgYW0gbm90IGFuIGltYWdl"
    jobs.apply(body)
    job = jobs.wait("garbage")
    assert reason(job) == "InputRefused" and "not a recognisable image" in job["status"]["message"]
    _nothing_left(stack, job, tenant)


def test_scenario_2_lost_responses_after_commit_are_retried_with_the_same_keys(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    stack.faults(
        "storage",
        [
            {
                "action": "drop-response",
                "method": "PUT",
                "path": "^/v1/objects/job:",
                "times": 1,
                "name": "s2-upload",
            }
        ],
    )
    stack.faults(
        "ai",
        [
            {
                "action": "drop-response",
                "method": "POST",
                "path": "^/v1/(bulk/)?tasks$",  # the operator creates tasks in bulk
                "times": 1,
                "name": "s2-schedule",
            }
        ],
    )
    try:
        jobs.apply(manifest("twice", tenant.account))
        job = jobs.wait("twice", timeout=120)
    finally:
        stack.faults("storage", [])
        stack.faults("ai", [])
    assert job["status"]["phase"] == "Delivered"
    assert {e["rule"] for e in stack.fault_log("storage") + stack.fault_log("ai")} >= {
        "s2-upload",
        "s2-schedule",
    }
    records = stack.job_records(_uid(job))
    assert len([o for o in records["objects"] if o["kind"] == "input"]) == 1
    assert len(records["tasks"]) == 1
    assert records["charges"]["charged"] == 10
    steps = {s["name"]: s["attempts"] for s in job["status"]["steps"]}
    assert steps["upload"] >= 2 and steps["schedule"] >= 2  # every retry is counted


def test_scenario_3_storage_down_while_the_result_is_stored_delays_but_delivers(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    stack.faults(
        "storage", [{"action": "reset", "method": "PUT", "path": "^/v1/objects/result:", "name": "s3"}]
    )
    try:
        jobs.apply(manifest("patient", tenant.account))
        eventually(lambda: any(e["rule"] == "s3" for e in stack.fault_log("storage")), 60, "a refused upload")
        waiting = jobs.get("patient")
        assert waiting is not None and waiting["status"]["phase"] == "Scheduled"
        processed = next(c for c in waiting["status"]["conditions"] if c["type"] == "Processed")
        assert processed["status"] == "False" and "queued or running" in processed["message"]
    finally:
        stack.faults("storage", [])
    job = jobs.wait("patient", timeout=90)
    assert job["status"]["phase"] == "Delivered"
    records = stack.job_records(_uid(job))
    assert records["charges"]["charged"] == 10 and len(records["charges"]["holds"]) == 1
    assert len([o for o in live(records["objects"]) if o["kind"] == "result"]) == 1


def test_scenario_3_storage_down_past_the_deadline_fails_and_refunds(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 12))
    stack.faults(
        "storage", [{"action": "reset", "method": "PUT", "path": "^/v1/objects/result:", "name": "s3b"}]
    )
    try:
        jobs.apply(manifest("late", tenant.account, deadline=deadline))
        job = jobs.wait("late", timeout=90)
    finally:
        stack.faults("storage", [])
    assert job["status"]["phase"] == "Failed" and reason(job) == "DeadlineExceeded"

    # The worker learns of the cancellation at its next heartbeat; a result that still landed
    # would be removed by the auditor: either way, nothing is left within a bounded time.
    def settled() -> bool:
        records = stack.job_records(_uid(job))
        return not live(records["objects"]) and all(t["state"] == "cancelled" for t in records["tasks"])

    eventually(settled, 60, "task cancelled and no objects left")
    _nothing_left(stack, job, tenant)


def test_deleting_a_job_mid_flight_compensates_it_then_lets_it_go(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
    jobs.apply(manifest("scheduled", tenant.account, runAt=later))
    job = jobs.wait("scheduled", ("Scheduled",))
    processed = next(c for c in job["status"]["conditions"] if c["type"] == "Processed")
    assert processed["reason"] == "WaitingForRunAt" and later in processed["message"]
    assert stack.balance(tenant.account)["held"] == 10
    jobs.kubectl("delete", "aij", "scheduled", "--wait=false")
    jobs.wait_gone("scheduled")
    _nothing_left(stack, job, tenant)


def test_a_delivered_jobs_deletion_keeps_the_charge(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    jobs.apply(manifest("keep", tenant.account, pipeline="grayscale", price=3))
    job = jobs.wait("keep")
    assert job["status"]["phase"] == "Delivered"
    jobs.kubectl("delete", "aij", "keep")
    jobs.wait_gone("keep")
    assert stack.balance(tenant.account) == {"id": tenant.account, "available": 97, "held": 0, "balance": 97}


def test_the_operator_killed_mid_saga_loses_nothing(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    """Each kill is proven to land while jobs are mid-saga (charged, stored and scheduled, waiting
    for their runAt), not before they started or after they ended. Kills at every await point
    are the deterministic simulator's job (tests/simulation)."""
    operator = stack.operators[-1]
    names: list[str] = []
    for round_ in range(3):
        # Long enough that a slow machine still catches the jobs waiting for it, mid-saga.
        run_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10))
        batch = [f"crash-{round_}-{i}" for i in range(3)]
        for name in batch:
            jobs.apply(manifest(name, tenant.account, pipeline="grayscale", price=3, runAt=run_at))
        names += batch
        mid = eventually(
            lambda batch=batch: [
                n
                for n in batch
                if ((jobs.get(n) or {}).get("status") or {}).get("phase")
                in ("Charged", "Uploaded", "Scheduled")
            ],
            30,
            "a job mid-saga",
        )
        assert mid
        operator.kill()
        operator.start()
    finished = [jobs.wait(name, timeout=120) for name in names]
    assert {j["status"]["phase"] for j in finished} == {"Delivered"}
    spent = 3 * len(names)
    assert stack.balance(tenant.account) == {
        "id": tenant.account,
        "available": 100 - spent,
        "held": 0,
        "balance": 100 - spent,
    }
    for job in finished:
        records = stack.job_records(_uid(job))
        assert records["charges"]["charged"] == 3 and len(records["charges"]["holds"]) == 1
        assert len(records["tasks"]) == 1
        assert len([o for o in live(records["objects"]) if o["kind"] == "result"]) == 1


def test_a_lost_delivery_answer_after_the_charge_still_ends_delivered(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    """Found by a 400-job campaign: each delivery attempt signs a fresh link, so the retry's body
    differed from the lost first request and the job stayed charged but undelivered."""
    stack.faults(
        "main",
        [
            {
                "action": "drop-response",
                "method": "POST",
                "path": "^/v1/deliveries$",
                "times": 1,
                "name": "lost-delivery",
            }
        ],
    )
    try:
        jobs.apply(manifest("notified", tenant.account, pipeline="grayscale", price=4))
        job = jobs.wait("notified", timeout=90)
    finally:
        stack.faults("main", [])
    assert any(e["rule"] == "lost-delivery" for e in stack.fault_log("main"))
    assert job["status"]["phase"] == "Delivered"
    assert stack.balance(tenant.account) == {"id": tenant.account, "available": 96, "held": 0, "balance": 96}
