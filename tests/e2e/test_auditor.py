"""The auditor: disagreements planted in a service, behind the saga's back, are found, reported
on the job, and repaired when the saga log alone justifies it (and only then). It judges a
finished job once, and again when the job changes (a person's annotation asks for it); when all
agree, it writes nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.stack import Stack, Tenant
from aijobs_services.kit.db import make_engine

from tests.e2e.conftest import Jobs, eventually, manifest


def _sql(stack: Stack, service: str, statement: str, **params: Any) -> None:
    engine = make_engine(stack.database_url(service))
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    engine.dispose()


@pytest.fixture(scope="module", autouse=True)
def _count_audits(stack: Stack) -> None:
    """Storage's fault proxy logs every read of a job's objects (a delay of 0 s: a counting
    transport in front of Storage). Only the auditor reads them (one read per audit of a job)."""
    rule = {"action": "delay", "seconds": 0, "method": "GET", "path": r"^/v1/jobs/[^/]+/objects$"}
    stack.faults("storage", [{**rule, "name": "audit-read"}])


def _audits(stack: Stack, uid: str) -> int:
    """How many times the auditor has read the job's objects: how many times it judged the job."""
    return sum(1 for entry in stack.fault_log("storage") if entry["path"] == f"/v1/jobs/{uid}/objects")


def _audited(stack: Stack, job: dict[str, Any], times: int = 1) -> None:
    uid = job["metadata"]["uid"]
    eventually(lambda: _audits(stack, uid) >= times, 30, f"audit #{times} of {job['metadata']['name']}")


def _ask_for_an_audit(jobs: Jobs, name: str) -> None:
    """What a person does to have a finished job judged again: change it (any annotation)."""
    jobs.kubectl("annotate", "--overwrite", "aij", name, f"aijobs.io/audit-requested={time.time_ns()}")


def _audit(jobs: Jobs, name: str, verdict: str) -> dict[str, Any]:
    def seen() -> Any:
        audit = (((jobs.get(name) or {}).get("status") or {}).get("audit")) or {}
        return audit if audit.get("verdict") == verdict else None

    found: dict[str, Any] = eventually(seen, 30, f"audit verdict {verdict}")
    return found


def _failed_job(stack: Stack, tenant: Tenant, jobs: Jobs, name: str) -> dict[str, Any]:
    body = manifest(name, tenant.account)
    body["spec"]["input"]["inline"]["data"] = "bm90IGFuIGltYWdl"
    jobs.apply(body)
    job = jobs.wait(name)
    assert job["status"]["phase"] == "Failed"
    _audited(stack, job)
    return job


def test_a_stray_hold_on_a_failed_job_is_released(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    job = _failed_job(stack, tenant, jobs, "stray-hold")
    stack.call(
        "payment",
        "POST",
        "/v1/holds",
        {"account": tenant.account, "jobId": job["metadata"]["uid"], "amount": 7},
    )
    assert stack.balance(tenant.account)["held"] == 7
    _ask_for_an_audit(jobs, "stray-hold")
    audit = _audit(jobs, "stray-hold", "repaired")
    assert any("stray-hold" in f and "release-hold" in f for f in audit["findings"])
    assert stack.balance(tenant.account) == {
        "id": tenant.account,
        "available": 100,
        "held": 0,
        "balance": 100,
    }
    assert "AuditRepaired" in jobs.kubectl("describe", "aij", "stray-hold").stdout


def test_an_object_revived_in_storages_database_is_deleted_again(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    image_job = manifest("orphan", tenant.account, price=200)  # can't afford: fails after nothing is stored
    jobs.apply(image_job)
    job = jobs.wait("orphan")
    _audited(stack, job)
    uid = job["metadata"]["uid"]
    with stack.admin("storage") as http:
        from tests.e2e.conftest import png

        planted = http.put(
            f"/v1/objects/planted:{uid}",
            params={"account": tenant.account, "jobId": uid, "state": "committed"},
            content=png(),
        ).json()
    _sql(stack, "storage", "update objects set state = 'committed' where id = :id", id=planted["id"])
    _ask_for_an_audit(jobs, "orphan")
    audit = _audit(jobs, "orphan", "repaired")
    assert any("orphan-object" in f for f in audit["findings"])
    assert stack.call("storage", "GET", f"/v1/objects/{planted['id']}")["state"] == "deleted"


def test_a_task_revived_in_the_ai_database_is_cancelled(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    job = _failed_job(stack, tenant, jobs, "zombie")
    uid = job["metadata"]["uid"]
    stack.call(
        "ai",
        "POST",
        "/v1/tasks",
        {
            "jobId": uid,
            "account": tenant.account,
            "pipeline": "grayscale",
            "inputObjectId": "obj-planted",
            "runAt": "2099-01-01T00:00:00Z",
        },
    )
    _sql(stack, "ai", "update tasks set cancel_requested = false where job_id = :uid", uid=uid)
    _ask_for_an_audit(jobs, "zombie")
    audit = _audit(jobs, "zombie", "repaired")
    assert any("orphan-task" in f for f in audit["findings"])
    [task] = stack.call("ai", "POST", "/v1/tasks/query", {"jobIds": [uid]})["items"]
    assert task["state"] == "cancelled"


def test_a_double_charge_is_reported_for_a_person_and_no_money_moves(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    jobs.apply(manifest("twice-charged", tenant.account, pipeline="grayscale", price=5))
    job = jobs.wait("twice-charged")
    assert job["status"]["phase"] == "Delivered"
    _audited(stack, job)
    uid = job["metadata"]["uid"]
    hold = stack.call("payment", "POST", "/v1/holds", {"account": tenant.account, "jobId": uid, "amount": 5})
    stack.call("payment", "POST", f"/v1/holds/{hold['id']}/capture")
    before = stack.balance(tenant.account)
    _ask_for_an_audit(jobs, "twice-charged")
    audit = _audit(jobs, "twice-charged", "needs-attention")
    assert any("double-charge" in f and "needs a person" in f for f in audit["findings"])
    assert stack.balance(tenant.account) == before  # a refund is a person's decision


def test_a_status_that_says_delivered_moves_no_money_without_a_result(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    """The auditor repairs from what the services hold, never from the phase alone: a job whose
    status was made to say Delivered, with no succeeded task and no result, is not charged."""
    import datetime as dt
    import json

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    jobs.apply(manifest("says-delivered", tenant.account, runAt=later, price=6))
    jobs.wait("says-delivered", ("Scheduled",))
    jobs.kubectl(
        "patch",
        "aij",
        "says-delivered",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Delivered"}}),
    )
    audit = _audit(jobs, "says-delivered", "needs-attention")
    assert any("missing-capture" in f and "needs a person" in f for f in audit["findings"]), audit
    assert stack.balance(tenant.account) == {"id": tenant.account, "available": 94, "held": 6, "balance": 100}


def test_a_finished_job_is_audited_once_and_nothing_is_written_when_all_agree(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    """The auditor judges a delivered job once: later passes ask no service about it while it does
    not change, and a job where all agree gets no write (no ``status.audit``, its
    resourceVersion untouched). Changing the job has it judged again."""
    jobs.apply(manifest("once", tenant.account, pipeline="grayscale", price=2))
    once = jobs.wait("once")
    assert once["status"]["phase"] == "Delivered"
    _audited(stack, once)
    # Two later jobs audited in turn: the auditor has made at least two passes since.
    for name in ("after-1", "after-2"):
        jobs.apply(manifest(name, tenant.account, pipeline="grayscale", price=1))
        _audited(stack, jobs.wait(name))
    assert _audits(stack, once["metadata"]["uid"]) == 1
    now = jobs.get("once")
    assert now is not None
    assert "audit" not in now["status"]
    assert now["metadata"]["resourceVersion"] == once["metadata"]["resourceVersion"]

    _ask_for_an_audit(jobs, "once")
    _audited(stack, once, times=2)
