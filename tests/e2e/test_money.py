"""The money bugs found from outside, each replayed against real processes on PostgreSQL with its
fault injected through the proxy hop, and each proven to have fired where intended.

1. a job deleted while capture's answer is lost still delivers, and only then goes;
2. the operator killed while capture's answer is in flight, restarted after the deadline, still
   delivers what the user paid for;
3. a job that would need its credits held beyond a hold's life is refused before any charge;
4. a short Storage outage is ridden out with retries spaced as the policy says;
5. an inline image that does not decode is refused before anything exists.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aijobs_dev.testbed.stack import Stack, Tenant

from tests.e2e.conftest import Jobs, eventually, live, manifest, reason


def _uid(job: dict[str, Any]) -> str:
    return str(job["metadata"]["uid"])


def _fired(stack: Stack, service: str, rule: str) -> list[dict[str, Any]]:
    return [e for e in stack.fault_log(service) if e["rule"] == rule]


# A capture, by its single route or the bulk one the operator sends it through.
CAPTURE = "^/v1/(holds/[^/]+/capture|bulk/captures)$"


def _lose_capture_answers(stack: Stack, name: str) -> None:
    """Payment captures and commits, then the answer never arrives (until the rule is cleared)."""
    stack.faults(
        "payment",
        [{"action": "drop-response", "method": "POST", "path": CAPTURE, "name": name}],
    )


def _charged_once_and_delivered(stack: Stack, job: dict[str, Any], tenant: Tenant, price: int) -> None:
    records = stack.job_records(_uid(job))
    assert records["charges"]["charged"] == price
    assert [h["state"] for h in records["charges"]["holds"]] == ["captured"]
    results = [o for o in live(records["objects"]) if o["kind"] == "result"]
    assert len(results) == 1  # the user can still fetch what they paid for
    assert stack.balance(tenant.account)["available"] == 100 - price


def test_a_job_deleted_while_captures_answer_is_lost_delivers_before_it_goes(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    _lose_capture_answers(stack, "capture-lost")
    try:
        jobs.apply(manifest("paid-then-deleted", tenant.account, pipeline="grayscale", price=4))
        eventually(lambda: _fired(stack, "payment", "capture-lost"), 60, "a capture whose answer was lost")
        jobs.kubectl("delete", "aij", "paid-then-deleted", "--wait=false")
        deleting = eventually(
            lambda: ((jobs.get("paid-then-deleted") or {}).get("metadata") or {}).get("deletionTimestamp"),
            what="deletion requested",
        )
        assert deleting
        held = jobs.get("paid-then-deleted")
        assert held is not None  # the finalizer holds the job: the user paid, so it must deliver
        uid = _uid(held)
    finally:
        stack.faults("payment", [])
    jobs.wait_gone("paid-then-deleted", timeout=90)
    _charged_once_and_delivered(stack, {"metadata": {"uid": uid}}, tenant, 4)


def test_the_operator_killed_during_capture_and_restarted_after_the_deadline_still_delivers(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    # Room to reach the capture on a machine three times slower than this one; the test then waits
    # for the deadline to pass (a condition, not a sleep).
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=45)
    _lose_capture_answers(stack, "capture-in-flight")
    operator = stack.operators[-1]
    try:
        jobs.apply(
            manifest(
                "crash-at-capture",
                tenant.account,
                pipeline="grayscale",
                price=6,
                deadline=deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
        eventually(
            lambda: _fired(stack, "payment", "capture-in-flight"), 60, "capture committed, answer lost"
        )
        operator.kill()
        job = jobs.get("crash-at-capture")
        assert job is not None
        capture = next(s for s in job["status"]["steps"] if s["name"] == "capture")
        assert capture["attempts"] >= 1  # written ahead: the log knows the capture may have happened
        eventually(lambda: dt.datetime.now(dt.UTC) > deadline, 90, "the deadline passed")
    finally:
        stack.faults("payment", [])
        operator.start()
    job = jobs.wait("crash-at-capture", timeout=90)
    assert job["status"]["phase"] == "Delivered"
    _charged_once_and_delivered(stack, job, tenant, 6)


def test_a_job_beyond_a_holds_life_is_refused_before_any_charge(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    run_at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    jobs.apply(manifest("next-month", tenant.account, runAt=run_at))
    job = jobs.wait("next-month")
    assert job["status"]["phase"] == "Failed" and reason(job) == "BeyondHoldLife"
    assert "30-day" in job["status"]["message"]
    assert stack.job_records(_uid(job))["charges"]["holds"] == []
    assert stack.balance(tenant.account)["available"] == 100


def test_a_storage_blip_is_ridden_out_with_retries_spaced_as_the_policy_says(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    stack.faults(
        "storage",
        [
            {
                "action": "status",
                "status": 503,
                "method": "PUT",
                "path": "^/v1/objects/job:",
                "times": 3,
                "name": "blip",
            }
        ],
    )
    try:
        body = manifest("blip", tenant.account, pipeline="grayscale", price=2)
        body["spec"]["retryPolicy"] = {"maxAttempts": 10, "initialBackoffSeconds": 2, "maxBackoffSeconds": 60}
        jobs.apply(body)
        job = jobs.wait("blip", timeout=90)
    finally:
        stack.faults("storage", [])
    assert job["status"]["phase"] == "Delivered"
    upload = next(s for s in job["status"]["steps"] if s["name"] == "upload")
    assert upload["attempts"] == 4  # three refused, one stored
    times = [e["t"] for e in _fired(stack, "storage", "blip")]
    assert len(times) == 3
    # Backoff 2 s doubling, jitter never below half: at least 1 s, then 2 s between attempts,
    # however often the job was woken by its own status writes coming back through the watch.
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 2.0, times


def test_an_inline_image_that_does_not_decode_is_refused_by_the_api_server(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    """It once matched the base64 pattern, was accepted, and held credits until the deadline while
    the upload step raised; the CRD now admits whole base64 quanta only (and the step, should one
    slip through, fails the job as InputUndecodable: tests/operator/test_steps.py)."""
    body = manifest("undecodable", tenant.account)
    body["spec"]["input"]["inline"]["data"] = "QUJDRAA"  # 7 characters: not whole base64
    refused = jobs.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False)
    assert refused.returncode != 0 and "spec.input.inline.data" in refused.stderr
    assert jobs.get("undecodable") is None
    assert stack.balance(tenant.account) == {
        "id": tenant.account,
        "available": 100,
        "held": 0,
        "balance": 100,
    }
