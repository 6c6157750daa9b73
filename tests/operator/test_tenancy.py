"""The CreditAccount rule: what to change in Auth and Payment so they match the object."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from aijobs_operator.tenancy import account_conditions, jobs_in_flight

from aijobs.api.tenancy import CreditAccountSpec, Readiness, SyncPlan, plan_sync, readiness


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


@pytest.mark.parametrize(
    ("wanted", "bound", "held", "plan"),
    [
        pytest.param(["a", "b"], set(), {"a": "acme"}, SyncPlan(False, False, ("b",), ()), id="one-taken"),
        pytest.param(
            ["a"], set(), {"a": "acme"}, SyncPlan(False, False, (), ()), id="only-taken-asks-nothing"
        ),
        pytest.param(["a"], set(), {}, SyncPlan(False, False, ("a",), ()), id="holder-let-go"),
        pytest.param(
            ["b"], {"a"}, {"b": "acme"}, SyncPlan(False, False, (), ("a",)), id="taken-while-moving"
        ),
    ],
)
def test_a_namespace_another_account_holds_is_not_asked_for(
    wanted: list[str], bound: set[str], held: dict[str, str], plan: SyncPlan
) -> None:
    """Auth would refuse it; a later pass asks again once its holder lets go."""
    spec = CreditAccountSpec(namespaces=wanted)
    assert plan_sync(spec, tenant_exists=True, account_exists=True, bound=bound, held_elsewhere=held) == plan


TAKEN_ONE = "namespace team-a is bound to account acme; remove it from this CreditAccount or from acme's"
TAKEN_TWO = (
    "namespace team-a is bound to account acme; namespace team-b is bound to account initech; "
    "remove each from this CreditAccount or from its holder's"
)
CONVERGING = Readiness(False, "Converging", "Auth or Payment changed while the operator synced; trying again")


@pytest.mark.parametrize(
    ("wanted", "account", "bound", "held", "ready"),
    [
        pytest.param(
            ["team-a", "team-c"],
            True,
            {"team-a", "team-c"},
            {},
            Readiness(True, "Synced", "account globex open; 2 namespace(s) may charge it"),
            id="synced",
        ),
        pytest.param(
            ["team-a", "team-c"],
            True,
            {"team-c"},
            {"team-a": "acme"},
            Readiness(False, "NamespaceTaken", TAKEN_ONE),
            id="one-taken-names-its-holder",
        ),
        pytest.param(
            ["team-b", "team-a"],
            True,
            set(),
            {"team-b": "initech", "team-a": "acme"},
            Readiness(False, "NamespaceTaken", TAKEN_TWO),
            id="two-taken-name-each-holder",
        ),
        pytest.param(
            ["team-a"],
            False,
            set(),
            {"team-a": "acme"},
            Readiness(False, "NamespaceTaken", TAKEN_ONE),
            id="taken-says-more-than-a-missing-account",
        ),
        pytest.param(["team-a"], True, set(), {}, CONVERGING, id="not-bound-nor-taken"),
        pytest.param(["team-a"], False, {"team-a"}, {}, CONVERGING, id="account-missing"),
        pytest.param(
            ["team-c"],
            True,
            {"team-c"},
            {"team-a": "acme"},
            Readiness(True, "Synced", "account globex open; 1 namespace(s) may charge it"),
            id="a-holder-outside-the-spec-does-not-matter",
        ),
    ],
)
def test_readiness(
    wanted: list[str], account: bool, bound: set[str], held: dict[str, str], ready: Readiness
) -> None:
    spec = CreditAccountSpec(namespaces=wanted)
    assert readiness("globex", spec, account_exists=account, bound=bound, held_elsewhere=held) == ready


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


def kstatus_rule(conditions: list[dict[str, Any]]) -> str:
    """kstatus's rule for a custom resource whose generation is observed (cli-utils,
    pkg/kstatus/status/generic.go, then status.go's Ready fallback)."""
    for cond in conditions:
        if cond["status"] == "True" and cond["type"] in ("Reconciling", "Stalled"):
            return "InProgress" if cond["type"] == "Reconciling" else "Failed"
    ready = next((c for c in conditions if c["type"] == "Ready"), None)
    if ready is not None:
        return "Current" if ready["status"] == "True" else "InProgress"
    return "Current"


# Each state a CreditAccount can be in and the status kstatus (Flux's wait: true, kpt) must read:
# what a person must fix is Failed; what the next pass may fix is InProgress.
# tests/foundation/test_kstatus.py replays these on a real API server through cli-utils' own code.
ACCOUNT_STATES = [
    pytest.param(True, "Synced", "Current", id="ready"),
    pytest.param(False, "InvalidSpec", "Failed", id="invalid-spec"),
    pytest.param(False, "NamespaceTaken", "Failed", id="namespace-taken"),
    pytest.param(False, "SyncFailed", "InProgress", id="sync-failing-is-retried"),
    pytest.param(False, "Converging", "InProgress", id="converging"),
]


@pytest.mark.parametrize(("ok", "reason", "kstatus"), ACCOUNT_STATES)
def test_account_conditions_say_what_kstatus_reads(ok: bool, reason: str, kstatus: str) -> None:
    body = {"metadata": {"generation": 3}, "status": {}}
    conditions = account_conditions(body, ok, reason, "why", dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert kstatus_rule(conditions) == kstatus
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Ready"]["status"] == str(ok)  # kubectl wait --for=condition=Ready
    assert by_type["Stalled"]["status"] == str(kstatus == "Failed")
    assert by_type["Reconciling"]["status"] == str(kstatus == "InProgress")
    assert {c["observedGeneration"] for c in conditions} == {3}


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    """``kubectl get`` shows how long an account has been Ready (or not): a pass that changes
    nothing must not reset that clock."""
    t1, t2 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC), dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    body: dict[str, Any] = {"metadata": {"generation": 1}, "status": {}}
    body["status"]["conditions"] = account_conditions(body, False, "Converging", "why", t1)
    same = {
        c["type"]: c["lastTransitionTime"] for c in account_conditions(body, False, "Converging", "x", t2)
    }
    ready = {c["type"]: c["lastTransitionTime"] for c in account_conditions(body, True, "Synced", "ok", t2)}
    assert set(same.values()) == {"2030-01-01T00:00:00Z"}
    assert ready["Ready"] == ready["Reconciling"] == "2030-01-02T00:00:00Z"
    assert ready["Synced"] == ready["Stalled"] == "2030-01-01T00:00:00Z"
