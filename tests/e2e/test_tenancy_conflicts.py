"""Two CreditAccounts that list one namespace, against the real operator and Auth: the first one
holds it, the second is told who does (in ``kubectl get creditaccounts``) and may not charge from
it, and takes it up once the first lets it go. Else a manifest in one tenant's namespace could
spend another tenant's credits.

The operator's full pass over CreditAccounts is an hour away here: whatever happens, happens
because something changed (an object, or a namespace another account let go of)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.postgres import PostgresCluster
from aijobs_dev.testbed.stack import Stack

from tests.e2e.conftest import eventually, make_stack


@pytest.fixture(scope="module")
def stack(
    control_plane: ControlPlane, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The services and the operator (no worker: no job runs here), syncing on changes only."""
    stack = make_stack(control_plane, postgres, tmp_path_factory, AIJOBS_ACCOUNT_SYNC_INTERVAL_SECONDS="3600")
    try:
        stack.start_operator()
        yield stack
    finally:
        stack.stop()


class Accounts:
    """kubectl on CreditAccounts (cluster-scoped) with the stack's kubeconfig."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.made: list[str] = []

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        argv = ["kubectl", f"--kubeconfig={self.stack.kubeconfig}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def apply(self, name: str, namespaces: list[str]) -> None:
        body = {
            "apiVersion": "aijobs.io/v1alpha1",
            "kind": "CreditAccount",
            "metadata": {"name": name},
            "spec": {"namespaces": namespaces},
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(body))
        self.made.append(name)

    def ready(self, name: str) -> dict[str, Any] | None:
        """The Ready condition, once the operator has synced the object's current generation."""
        body = json.loads(self.kubectl("get", "creditaccount", name, "-o", "json"))
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            return None
        return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        body = json.loads(self.kubectl("get", "creditaccount", name, "-o", "json"))
        return next(c for c in body["status"]["conditions"] if c["type"] == type_)


@pytest.fixture
def accounts(stack: Stack) -> Iterator[Accounts]:
    made = Accounts(stack)
    yield made
    for name in made.made:
        made.kubectl("delete", "creditaccount", name, "--ignore-not-found", "--wait=false")


def may_charge(stack: Stack, namespace: str, account: str) -> int:
    with stack.admin("auth") as auth:
        answer = auth.post("/v1/authorize-charge", json={"namespace": namespace, "account": account})
    assert answer.status_code in (200, 403), answer.text
    return answer.status_code


def test_a_namespace_two_credit_accounts_list_charges_only_the_one_that_holds_it(
    stack: Stack, accounts: Accounts
) -> None:
    suffix = uuid.uuid4().hex[:6]
    first, second = f"first-{suffix}", f"second-{suffix}"
    shared, own = f"shared-{suffix}", f"own-{suffix}"

    accounts.apply(first, [shared])
    eventually(lambda: (accounts.ready(first) or {}).get("status") == "True", what=f"{first} Ready")

    accounts.apply(second, [own, shared])

    def shown_taken() -> dict[str, Any] | None:
        ready = accounts.ready(second)
        return ready if ready and ready["reason"] == "NamespaceTaken" else None

    taken = eventually(shown_taken, what=f"{second} showing {shared} as taken")
    assert taken["status"] == "False"
    assert taken["message"] == (
        f"namespace {shared} is bound to account {first}; remove it from this CreditAccount or from {first}'s"
    )
    assert accounts.condition(second, "Synced")["status"] == "True"  # Auth was reached
    listed = accounts.kubectl("get", "creditaccounts", second).splitlines()
    assert listed[0].split()[5:8] == ["READY", "REASON", "MESSAGE"], listed
    assert listed[1].split()[5:7] == ["False", "NamespaceTaken"], listed
    assert f"is bound to account {first}" in listed[1], listed
    # Auth lets the shared namespace charge the first account only; the second keeps its own.
    assert may_charge(stack, shared, second) == 403
    assert may_charge(stack, shared, first) == 200
    assert may_charge(stack, own, second) == 200
    assert stack.call("auth", "GET", f"/v1/bindings?account={second}")["items"] == [
        {"namespace": own, "account": second}
    ]
    assert (accounts.ready(first) or {}).get("status") == "True"  # the holder is unmoved

    # The first lets go: the second takes the namespace up without anyone touching it, and
    # without waiting for the next full pass.
    accounts.kubectl("patch", "creditaccount", first, "--type=merge", "-p", '{"spec":{"namespaces":[]}}')
    eventually(lambda: (accounts.ready(second) or {}).get("status") == "True", what=f"{second} Ready")
    assert may_charge(stack, shared, second) == 200
    assert may_charge(stack, shared, first) == 403
    assert "NamespaceTaken" not in accounts.kubectl("get", "creditaccounts", first, second)
