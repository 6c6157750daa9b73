"""The CreditAccount resource (``aijobs.io/v1alpha1``, cluster-scoped) as pydantic models, and the
pure rule that turns its spec and what Auth and Payment hold into the calls that make them match.

A CreditAccount is desired state: the account exists, and exactly these namespaces may charge it.
Money is not desired state (a top-up happens once, it is not "converged to"), so nothing here
moves credits; ``aijobs admin top-up`` does, under an Idempotency-Key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydantic import Field

from aijobs.api.v1alpha1 import GROUP, VERSION, Condition, _Model

__all__ = [
    "ACCOUNT_API_VERSION",
    "ACCOUNT_FINALIZER",
    "ACCOUNT_KIND",
    "ACCOUNT_PLURAL",
    "CreditAccountSpec",
    "CreditAccountStatus",
    "SyncPlan",
    "plan_sync",
]

ACCOUNT_KIND = "CreditAccount"
ACCOUNT_PLURAL = "creditaccounts"
ACCOUNT_API_VERSION = f"{GROUP}/{VERSION}"
ACCOUNT_FINALIZER = f"{GROUP}/bindings"


class CreditAccountSpec(_Model):
    namespaces: list[str] = Field(
        default_factory=list, max_length=256, description="Namespaces whose jobs may charge the account"
    )
    description: str | None = Field(default=None, max_length=500)


class CreditAccountStatus(_Model):
    observed_generation: int | None = None
    available: int | None = None
    held: int | None = None
    balance: int | None = None
    jobs_in_flight: int | None = None
    bound_namespaces: list[str] | None = None
    last_sync_time: dt.datetime | None = None
    conditions: list[Condition] = Field(default_factory=list)


@dataclass(frozen=True)
class SyncPlan:
    """What to change so that Auth and Payment match a CreditAccount."""

    create_tenant: bool
    open_account: bool
    bind: tuple[str, ...]
    unbind: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.create_tenant or self.open_account or self.bind or self.unbind)


def plan_sync(
    wanted: CreditAccountSpec | None,
    *,
    tenant_exists: bool,
    account_exists: bool,
    bound: set[str],
) -> SyncPlan:
    """The calls that make Auth and Payment match ``wanted``; ``None`` means the CreditAccount is
    being deleted: its namespaces stop charging it, and the account with its ledger stays (money
    history is never deleted; a CreditAccount of the same name takes it up again)."""
    if wanted is None:
        return SyncPlan(False, False, (), tuple(sorted(bound)))
    want = set(wanted.namespaces)
    return SyncPlan(
        create_tenant=not tenant_exists,
        open_account=not account_exists,
        bind=tuple(sorted(want - bound)),
        unbind=tuple(sorted(bound - want)),
    )
