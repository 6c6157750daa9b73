"""Finished jobs go away on time (``spec.ttlSecondsAfterFinished``), their history kept: Main API
still holds the delivery, Payment's ledger the capture. A job without a TTL (and no operator
default) stays."""

from __future__ import annotations

import json

import sqlalchemy as sa
from aijobs_dev.testbed.stack import Stack, Tenant
from aijobs_services.kit.db import make_engine

from tests.e2e.conftest import Jobs, manifest


def _delivery(stack: Stack, uid: str) -> str | None:
    """The state of the delivery Main API recorded for the job (None: none recorded)."""
    engine = make_engine(stack.database_url("main"))
    with engine.connect() as conn:
        state = conn.execute(sa.text("select state from deliveries where id = :uid"), {"uid": uid}).scalar()
    engine.dispose()
    return None if state is None else str(state)


def test_a_delivered_job_goes_when_its_ttl_is_up_and_its_history_stays(
    stack: Stack, tenant: Tenant, jobs: Jobs
) -> None:
    jobs.apply(manifest("kept", tenant.account, pipeline="grayscale", price=4))
    kept = jobs.wait("kept")
    assert kept["status"]["phase"] == "Delivered"

    jobs.apply(
        manifest("short-lived", tenant.account, pipeline="grayscale", price=5, ttlSecondsAfterFinished=0)
    )
    job = jobs.wait("short-lived")
    assert job["status"]["phase"] == "Delivered"
    uid = job["metadata"]["uid"]
    jobs.wait_gone("short-lived", timeout=60)

    charges = stack.call("payment", "GET", f"/v1/jobs/{uid}/charges")
    assert charges["charged"] == 5
    assert [h["state"] for h in charges["holds"]] == ["captured"]
    assert stack.balance(tenant.account) == {"id": tenant.account, "available": 91, "held": 0, "balance": 91}
    assert _delivery(stack, uid) is not None
    # The job without a TTL, finished before the other went, was passed over by the same rounds.
    assert jobs.get("kept") is not None


def test_a_ttl_set_after_the_job_finished_applies(stack: Stack, tenant: Tenant, jobs: Jobs) -> None:
    """The TTL is the one spec field that may change once the job is accepted, as a Job's may."""
    jobs.apply(
        manifest("later", tenant.account, pipeline="grayscale", price=3, ttlSecondsAfterFinished=86400)
    )
    job = jobs.wait("later")
    assert job["status"]["phase"] == "Delivered"
    jobs.kubectl(
        "patch", "aij", "later", "--type=merge", "-p", json.dumps({"spec": {"ttlSecondsAfterFinished": 1}})
    )
    jobs.wait_gone("later", timeout=60)
    assert stack.call("payment", "GET", f"/v1/jobs/{job['metadata']['uid']}/charges")["charged"] == 3
