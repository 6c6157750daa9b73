"""The CreditAccount rule: what to change in Auth and Payment so they match the object."""

from __future__ import annotations

import pytest
from aijobs_operator.tenancy import jobs_in_flight

from aijobs.api.tenancy import CreditAccountSpec, SyncPlan, plan_sync


@pytest.mark.parametrize(
    ("wanted", "tenant", "account", "bound", "plan"),
    [
        pytest.param(["a", "b"], False, False, set(), SyncPlan(True, True, ("a", "b"), ()), id="new"),
        pytest.param(["a", "b"], True, True, {"a", "b"}, SyncPlan(False, False, (), ()), id="in-sync"),
        pytest.param(["b", "c"], True, True, {"a", "b"}, SyncPlan(False, False, ("c",), ("a",)), id="moved"),
        pytest.param([], True, True, {"a"}, SyncPlan(False, False, (), ("a",)), id="emptied"),
        pytest.param(["a"], True, False, {"a"}, SyncPlan(False, True, (), ()), id="account-missing"),
        pytest.param(None, True, True, {"a", "b"}, SyncPlan(False, False, (), ("a", "b")), id="deleting"),
        pytest.param(None, False, False, set(), SyncPlan(False, False, (), ()), id="deleting-nothing-left"),
    ],
)
def test_plan_sync(
    wanted: list[str] | None, tenant: bool, account: bool, bound: set[str], plan: SyncPlan
) -> None:
    spec = None if wanted is None else CreditAccountSpec(namespaces=wanted)
    assert plan_sync(spec, tenant_exists=tenant, account_exists=account, bound=bound) == plan


def test_deleting_never_closes_the_account() -> None:
    """Money history is never deleted: a deletion only unbinds."""
    plan = plan_sync(None, tenant_exists=True, account_exists=True, bound={"a"})
    assert not plan.create_tenant and not plan.open_account and plan.unbind == ("a",)


def test_jobs_in_flight_count_only_jobs_that_have_not_ended() -> None:
    jobs = [
        {"spec": {"account": "acme"}, "status": {"phase": "Scheduled"}},
        {"spec": {"account": "acme"}},
        {"spec": {"account": "acme"}, "status": {"phase": "Delivered"}},
        {"spec": {"account": "acme"}, "status": {"phase": "Failed"}},
        {"spec": {"account": "other"}, "status": {"phase": "Charged"}},
    ]
    assert jobs_in_flight(jobs) == {"acme": 2, "other": 1}
