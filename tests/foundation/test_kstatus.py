"""What Flux (a Kustomization with ``wait: true``), kpt and every applier built on kstatus read of
our objects, computed by cli-utils' own code on live objects of a real API server.

Each job's status is the log the operator's pure core writes for that state (the tables of
``tests/operator/test_core.py``), written through the status subresource as the engine writes it;
each CreditAccount's status is written by the operator's own sync pass, with Auth and Payment
played by a small fake. Then ``kubectl get -o json`` reads them back and kstatus judges them: a
failed, refunded job must read Failed, never Current.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from aijobs_dev.controlplane.kstatus import compute, ensure_kstatus
from aijobs_operator.engine import dump_status
from aijobs_operator.kube import ApiKubeWriter
from aijobs_operator.steps import Services
from aijobs_operator.tenancy import AccountSyncer
from kubernetes import client
from pydantic import BaseModel

from aijobs.api.tenancy import ACCOUNT_PLURAL
from aijobs.api.v1alpha1 import GROUP, VERSION, AIImageJobStatus
from aijobs.wire.client import Ambiguous, ServiceClient, ServiceError
from tests.conftest import Kubectl
from tests.operator.test_core import JOB_STATES
from tests.operator.test_tenancy import ACCOUNT_STATES

pytestmark = pytest.mark.controlplane
M = TypeVar("M", bound=BaseModel)


@pytest.fixture(scope="session")
def kstatus() -> Path:
    return ensure_kstatus()


def _verdicts(binary: Path, kubectl: Kubectl, *what: str) -> dict[str, str]:
    objects = kubectl.run("get", *what, "-o", "json", check=True).stdout
    return {v.name: v.status for v in compute(binary, objects)}


def _job_manifest(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AIImageJob",
            "metadata": {"name": name},
            "spec": {
                "account": "acme",
                "pipeline": "upscale-x2",
                "price": 10,
                "input": {"storageRef": {"objectId": "o1"}},
            },
        }
    )


def test_kstatus_reads_each_job_state_as_a_user_of_flux_or_kpt_should_see_it(
    kstatus: Path, kubectl: Kubectl, kube_api: client.ApiClient
) -> None:
    writer = ApiKubeWriter(kube_api)
    want = {}
    for case in JOB_STATES:
        build, expect, _ = cast(tuple[Callable[[], AIImageJobStatus], str, str], case.values)
        name = cast(str, case.id)
        kubectl.run("create", "-f", "-", stdin=_job_manifest(name), check=True)
        status = dump_status(build())
        assert status["observedGeneration"] == kubectl.json("get", "aij", name)["metadata"]["generation"]
        asyncio.run(writer.patch_status(kubectl.namespace, name, status))
        want[name] = expect
    assert _verdicts(kstatus, kubectl, "aij") == want


class _Services:
    """Auth and Payment as the sync pass calls them: tenants, accounts and namespace bindings."""

    def __init__(self, bindings: dict[str, str], *, down: bool = False, binds: bool = True) -> None:
        self.bindings = dict(bindings)  # namespace -> account
        self.down = down  # nothing answers: every call is an unknown outcome
        self.binds = binds  # False: a bind is lost (Auth changed while the operator synced)

    async def json(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        if self.down:
            raise Ambiguous("auth", "connection refused")
        if path.startswith(("/v1/tenants/", "/v1/accounts/")):
            return {"id": path.rsplit("/", 1)[-1], "available": 90, "held": 10, "balance": 100}
        key, value = next(iter((params or {}).items()))
        items = [{"namespace": ns, "account": acc} for ns, acc in self.bindings.items()]
        return {"items": [b for b in items if b[key] == value]}

    async def fetch(self, into: type[M], method: str, path: str, params: dict[str, str] | None = None) -> M:
        return into.model_validate(await self.json(method, path, params))

    async def call(self, method: str, path: str, key: str, json: dict[str, str] | None = None) -> None:
        if self.binds and method == "POST" and path == "/v1/bindings" and json is not None:
            self.bindings.setdefault(json["namespace"], json["account"])

    def as_services(self) -> Services:
        me = cast(ServiceClient, self)
        return Services(auth=me, payment=me, storage=me, ai=me, main=me)


@pytest.fixture
def accounts(kube_api: client.ApiClient) -> Iterator[list[str]]:
    """CreditAccounts are cluster-wide: those a test made are removed, finalizer first."""
    made: list[str] = []
    yield made
    custom = client.CustomObjectsApi(kube_api)
    for name in made:
        patch = {"metadata": {"finalizers": None}}
        custom.patch_cluster_custom_object(GROUP, VERSION, ACCOUNT_PLURAL, name, patch)
        custom.delete_cluster_custom_object(GROUP, VERSION, ACCOUNT_PLURAL, name)


def test_kstatus_reads_each_credit_account_state_as_a_user_of_flux_or_kpt_should_see_it(
    kstatus: Path, kubectl: Kubectl, kube_api: client.ApiClient, accounts: list[str]
) -> None:
    suffix = uuid.uuid4().hex[:6]
    custom = client.CustomObjectsApi(kube_api)
    want = {}
    for case in ACCOUNT_STATES:
        _, reason, expect = cast(tuple[bool, str, str], case.values)
        name = f"{case.id}-{suffix}"
        mine, theirs = f"{name}-ns", f"other-{suffix}"
        held = {mine: theirs} if reason == "NamespaceTaken" else {}
        services = _Services(held, down=reason == "SyncFailed", binds=reason != "Converging")
        syncer = AccountSyncer(services.as_services(), ApiKubeWriter(kube_api), list, 60)
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CreditAccount",
            "metadata": {"name": name},
            "spec": {"namespaces": [mine]},
        }
        body = cast(dict[str, Any], custom.create_cluster_custom_object(GROUP, VERSION, ACCOUNT_PLURAL, body))
        accounts.append(name)
        if reason == "InvalidSpec":  # the CRD admits none now; an object stored before may be one
            body = {**body, "spec": {"namespaces": "not-a-list"}}
        try:
            asyncio.run(syncer.sync(body, 0))
        except ServiceError:
            assert reason == "SyncFailed"  # said in the status, then raised for the retry
        status = kubectl.json("get", "creditaccount", name)["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == reason
        want[name] = expect
    got = _verdicts(kstatus, kubectl, "creditaccounts")
    assert {n: s for n, s in got.items() if n.endswith(suffix)} == want
    taken = kubectl.run("get", "creditaccount", f"namespace-taken-{suffix}", check=True).stdout
    assert "NamespaceTaken" in taken  # kubectl get's Reason column says the same
