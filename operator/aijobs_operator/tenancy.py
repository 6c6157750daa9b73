"""CreditAccount objects made real: Auth's tenant and bindings and Payment's account follow each
object's spec, and its status shows the account's balances and jobs in flight.

Level-based like the job reconciler: every pass reads what Auth and Payment hold, asks the pure
rule (:func:`aijobs.api.tenancy.plan_sync`) what to change, changes it with idempotent calls, and
writes the status only when it differs. A pass runs on every change of the object and, for the
balances, every ``account_sync_interval_seconds``. Deleting the object stops its namespaces
charging the account (a finalizer holds it until Auth agrees); the account and its ledger stay.
Its writes to Kubernetes go through the same :class:`~aijobs_operator.kube.KubeWriter` as the job
reconciler's, so the deterministic simulator runs this code unchanged.

A namespace of the spec that another account holds (Auth binds a namespace to one account at most)
stays unbound: the object shows Ready=False ``NamespaceTaken`` naming the holder, and each pass
reads again who holds it. An account that lets a namespace go wakes the others that list it, so
they bind it without waiting for the next full pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from aijobs.api.auth import Bindings, Tenant
from aijobs.api.payment import Account
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.tenancy import (
    ACCOUNT_FINALIZER,
    NAMESPACE_TAKEN,
    CreditAccountSpec,
    SyncPlan,
    plan_sync,
    readiness,
)
from aijobs.wire.client import Refused, ServiceError
from aijobs_operator.core import iso
from aijobs_operator.kube import ACCOUNTS, ApiException, KubeWriter
from aijobs_operator.saga import now
from aijobs_operator.steps import Services

log = logging.getLogger("aijobs.operator.tenancy")


@dataclass(frozen=True)
class Seen:
    """What Auth and Payment hold for one account, read at the start (and end) of a pass."""

    tenant: bool
    account: Account | None
    bound: set[str]
    held: dict[str, str]  # namespace of the spec -> the other account that holds it


def jobs_in_flight(jobs: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Per account, the jobs that have not ended (from the job reconciler's cache)."""
    counts: dict[str, int] = {}
    for body in jobs:
        account = (body.get("spec") or {}).get("account")
        if account and (body.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            counts[account] = counts.get(account, 0) + 1
    return counts


class AccountSyncer:
    def __init__(
        self,
        services: Services,
        kube: KubeWriter,
        jobs: Callable[[], Iterable[dict[str, Any]]],
        interval: float,
        clock: Callable[[], dt.datetime] = now,
        fresh_key: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.svc = services
        self.kube = kube
        self.clock = clock
        self._fresh_key = fresh_key  # the simulator draws its keys from its seed
        self._jobs = jobs
        self._interval = interval
        self.accounts: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.accounts.pop(name, None)
            return
        self.accounts[name] = body
        self._dirty.add(name)
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while True:
            timeout = max(0.0, next_full - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if loop.time() >= next_full:
                names, next_full = set(self.accounts), loop.time() + self._interval
            else:
                names = set(self._dirty)
            self._dirty -= names
            counts = jobs_in_flight(self._jobs())
            for name in sorted(names):
                body = self.accounts.get(name)
                if body is not None:
                    try:
                        await self.sync(body, counts.get(name, 0))
                    except Exception:  # one account's trouble must not stop the others
                        log.exception("CreditAccount %s: sync failed", name)
                        self._dirty.add(name)

    async def sync(self, body: dict[str, Any], in_flight: int) -> None:
        name = body["metadata"]["name"]
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        try:
            spec = CreditAccountSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:  # the CRD admits only valid specs; an old object may not be
            observed = {"observedGeneration": body["metadata"].get("generation")}
            why = str(exc)[:1000]
            conditions = account_conditions(body, False, "InvalidSpec", why, self.clock())
            await self._status(body, observed, conditions)
            return
        if not deleting and ACCOUNT_FINALIZER not in (body["metadata"].get("finalizers") or []):
            body = await self.kube.add_finalizer(body, ACCOUNT_FINALIZER, ACCOUNTS)
            self.accounts[name] = body
        wanted = () if deleting else spec.namespaces
        try:
            seen = await self._read(name, wanted)
            plan = plan_sync(
                None if deleting else spec,
                tenant_exists=seen.tenant,
                account_exists=seen.account is not None,
                bound=seen.bound,
                held_elsewhere=seen.held,
            )
            if not plan.empty:
                await self._apply(name, plan)  # a bind that lost a race is refused: read below
                seen = await self._read(name, wanted)
                if plan.unbind:
                    self._wake_claimants(name, plan.unbind)
        except ServiceError as exc:
            observed = {"observedGeneration": body["metadata"].get("generation")}
            why = str(exc)[:1000]
            await self._status(
                body, observed, account_conditions(body, False, "SyncFailed", why, self.clock())
            )
            raise
        if deleting:
            await self.kube.remove_finalizer(body, ACCOUNT_FINALIZER, ACCOUNTS)
            return
        account = seen.account
        status = {
            "observedGeneration": body["metadata"].get("generation"),
            "available": account.available if account is not None else None,
            "held": account.held if account is not None else None,
            "balance": account.balance if account is not None else None,
            "jobsInFlight": in_flight,
            "boundNamespaces": sorted(seen.bound),
        }
        ready = readiness(
            name, spec, account_exists=account is not None, bound=seen.bound, held_elsewhere=seen.held
        )
        conditions = account_conditions(body, ready.ready, ready.reason, ready.message, self.clock())
        await self._status(body, status, conditions)

    def _wake_claimants(self, releaser: str, namespaces: Iterable[str]) -> None:
        """The other accounts that list a namespace ``releaser`` let go of may bind it now."""
        freed = set(namespaces)
        for other, body in self.accounts.items():
            if other != releaser and freed & set((body.get("spec") or {}).get("namespaces") or []):
                self._dirty.add(other)
                self._wake.set()

    async def _read(self, name: str, wanted: Iterable[str]) -> Seen:
        """What Auth and Payment hold for account ``name``; ``held`` names the holder of each
        namespace in ``wanted`` that another account holds (asked only for the unbound ones)."""
        try:
            await self.svc.auth.fetch(Tenant, "GET", f"/v1/tenants/{name}")
            tenant = True
        except Refused as exc:
            if exc.status != 404:
                raise
            tenant = False
        account: Account | None
        try:
            account = await self.svc.payment.fetch(Account, "GET", f"/v1/accounts/{name}")
        except Refused as exc:
            if exc.status != 404:
                raise
            account = None
        bindings = await self.svc.auth.fetch(Bindings, "GET", "/v1/bindings", params={"account": name})
        bound = {b.namespace for b in bindings.items}
        held: dict[str, str] = {}
        for namespace in sorted(set(wanted) - bound):
            holders = await self.svc.auth.fetch(
                Bindings, "GET", "/v1/bindings", params={"namespace": namespace}
            )
            for b in holders.items:
                if b.account != name:
                    held[namespace] = b.account
        return Seen(tenant, account, bound, held)

    async def _apply(self, name: str, plan: SyncPlan) -> None:
        # Each call under a fresh key: the plan came from a fresh read, and a lost answer is found
        # out by the next read (an "already exists" answer is what a retry would have said).
        async def once(call: Any, *args: Any, **kwargs: Any) -> None:
            try:
                await call(*args, key=self._fresh_key(), **kwargs)
            except Refused as exc:
                if exc.status != 409:
                    raise

        if plan.create_tenant:
            await once(self.svc.auth.call, "POST", "/v1/tenants", json={"id": name})
        if plan.open_account:
            await once(self.svc.payment.call, "POST", "/v1/accounts", json={"id": name})
        for namespace in plan.bind:
            await once(
                self.svc.auth.call, "POST", "/v1/bindings", json={"namespace": namespace, "account": name}
            )
        for namespace in plan.unbind:
            await once(self.svc.auth.call, "DELETE", f"/v1/bindings/{namespace}/{name}")

    async def _status(
        self, body: dict[str, Any], fields: dict[str, Any], conditions: list[dict[str, Any]]
    ) -> None:
        current = body.get("status") or {}
        wanted = {**current, **fields, "conditions": conditions}
        if _comparable(wanted) == _comparable(current):
            return
        wanted["lastSyncTime"] = iso(self.clock())
        name = body["metadata"]["name"]
        try:
            updated = await self.kube.patch_status(None, name, wanted, ACCOUNTS)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        self.accounts[name] = updated


def _comparable(status: dict[str, Any]) -> Any:
    conditions = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return {**{k: v for k, v in status.items() if k != "lastSyncTime"}, "conditions": conditions}


# Ready=False reasons that another pass will not change: a person must act (the message says how).
# kstatus (Flux's wait, kpt) reads them as Failed through Stalled=True. SyncFailed (Auth or Payment
# did not answer, or refused) is not among them: every pass retries it and a service coming back
# heals it unattended, as a job's unknown outcome is retried; so it reads InProgress, and an
# applier that waits says its message when its own timeout ends the wait.
STALLED_REASONS = frozenset({"InvalidSpec", NAMESPACE_TAKEN})


def account_conditions(
    body: dict[str, Any], ok: bool, reason: str, message: str, at: dt.datetime
) -> list[dict[str, Any]]:
    """Ready (the account exists and exactly the spec's namespaces may charge it), Synced (the
    last pass reached Auth and Payment) and what kstatus reads: Reconciling (InProgress) while a
    later pass may still get it Ready, Stalled (Failed) while only a person can; neither once
    Ready. A transition time (``at``) changes only when a status does."""
    previous = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    generation = body["metadata"].get("generation")
    stamp = iso(at)
    synced = reason not in ("SyncFailed", "InvalidSpec")
    stalled = not ok and reason in STALLED_REASONS
    out = []
    for type_, value in (
        ("Ready", ok),
        ("Synced", synced),
        ("Reconciling", not ok and not stalled),
        ("Stalled", stalled),
    ):
        status = "True" if value else "False"
        old = previous.get(type_) or {}
        out.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": old.get("lastTransitionTime", stamp)
                if old.get("status") == status
                else stamp,
            }
        )
    return out
