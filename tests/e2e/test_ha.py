"""Two operator replicas: only the Lease holder drives jobs; the standby takes over when it dies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aijobs_dev.testbed.stack import Stack
from kubernetes import client as k8s

from aijobs.kube import api_client
from tests.e2e.conftest import Jobs, eventually, make_stack, manifest


@pytest.fixture(scope="module")
def ha_stack(control_plane: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(control_plane, postgres, tmp_path_factory)
    try:
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


def _lease(stack: Stack) -> Any:
    return k8s.CoordinationV1Api(api_client(stack.kubeconfig)).read_namespaced_lease(
        stack.operator_env["AIJOBS_LEASE_NAME"], "default"
    )


def _holder(stack: Stack) -> str | None:
    try:
        lease = _lease(stack)
    except k8s.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return str(lease.spec.holder_identity)


def _writes(stack: Stack, index: int) -> float:
    text = stack.operator_metrics(stack.operators[index])
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aijobs_operator_api_writes_total{")
    )


def test_a_standby_replica_stays_idle_and_takes_over_when_the_leader_dies(ha_stack: Stack) -> None:
    stack = ha_stack
    tenant = stack.tenant("ha", credits=100)
    jobs = Jobs(stack, tenant.namespace)
    stack.start_operator()
    eventually(lambda: _holder(stack) == "operator-0", 30, "operator-0 leads")
    stack.start_operator()  # a second replica: it finds the Lease taken and waits
    jobs.apply(manifest("first", tenant.account, pipeline="grayscale", price=1))
    assert jobs.wait("first")["status"]["phase"] == "Delivered"
    assert _holder(stack) == "operator-0"
    assert _writes(stack, 0) > 0 and _writes(stack, 1) == 0  # the standby never wrote

    stack.operators[0].kill()
    # No stopwatch: the standby must take the Lease once it lapses (the deadline only bounds the
    # wait), and say so in the Lease's own record of hand-overs.
    eventually(lambda: _holder(stack) == "operator-1", 60, "operator-1 takes the lease")
    assert (_lease(stack).spec.lease_transitions or 0) >= 1
    jobs.apply(manifest("second", tenant.account, pipeline="grayscale", price=1))
    assert jobs.wait("second")["status"]["phase"] == "Delivered"
    assert stack.balance(tenant.account)["available"] == 98
