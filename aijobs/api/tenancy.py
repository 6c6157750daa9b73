"""The CreditAccount resource (``aijobs.io/v1alpha1``, cluster-scoped) as pydantic models, and the
pure rule that turns its spec and what Auth and Payment hold into the calls that make them match.

A CreditAccount is desired state: the account exists, and exactly these namespaces may charge it.
A namespace charges one account at most (Auth's database holds to it): a namespace another account
holds stays unbound here, and the object is not Ready until that account lets go of it.
Money is not desired state (a top-up happens once, it is not "converged to"), so nothing here
moves credits; ``aijobs admin top-up`` does, under an Idempotency-Key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import Field

from aijobs.api.v1alpha1 import GROUP, VERSION, Condition, _Model

__all__ = [
    "ACCOUNT_API_VERSION",
    "ACCOUNT_FINALIZER",
    "ACCOUNT_KIND",
    "ACCOUNT_PLURAL",
    "NAMESPACE_TAKEN",
    "CreditAccountSpec",
    "CreditAccountStatus",
    "Readiness",
    "SyncPlan",
    "plan_sync",
    "readiness",
]

ACCOUNT_KIND = "CreditAccount"
ACCOUNT_PLURAL = "creditaccounts"
ACCOUNT_API_VERSION = f"{GROUP}/{VERSION}"
ACCOUNT_FINALIZER = f"{GROUP}/bindings"
# The Ready condition's reason while a namespace of the spec is held by another account.
NAMESPACE_TAKEN = "NamespaceTaken"


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
    held_elsewhere: Mapping[str, str] = MappingProxyType({}),
) -> SyncPlan:
    """The calls that make Auth and Payment match ``wanted``; ``None`` means the CreditAccount is
    being deleted: its namespaces stop charging it, and the account with its ledger stays (money
    history is never deleted; a CreditAccount of the same name takes it up again).

    ``held_elsewhere`` (namespace -> the account that holds it) are not asked for: Auth would
    refuse them. A later pass asks again once their holder has let go."""
    if wanted is None:
        return SyncPlan(False, False, (), tuple(sorted(bound)))
    want = set(wanted.namespaces)
    return SyncPlan(
        create_tenant=not tenant_exists,
        open_account=not account_exists,
        bind=tuple(sorted(want - bound - set(held_elsewhere))),
        unbind=tuple(sorted(bound - want)),
    )


@dataclass(frozen=True)
class Readiness:
    """The Ready condition a sync pass ends with."""

    ready: bool
    reason: str
    message: str


def readiness(
    name: str,
    wanted: CreditAccountSpec,
    *,
    account_exists: bool,
    bound: set[str],
    held_elsewhere: Mapping[str, str],
) -> Readiness:
    """Whether Auth and Payment match ``wanted`` after a pass. A namespace of ``wanted`` that
    another account holds (``held_elsewhere``: namespace -> holder) keeps the object from Ready,
    named with its holder so that an admin knows whom to ask."""
    held = {
        ns: holder
        for ns, holder in sorted(held_elsewhere.items())
        if ns in wanted.namespaces and ns not in bound
    }
    if held:
        if len(held) == 1:
            [(namespace, holder)] = held.items()
            message = (
                f"namespace {namespace} is bound to account {holder}; "
                f"remove it from this CreditAccount or from {holder}'s"
            )
        else:
            message = (
                "; ".join(f"namespace {ns} is bound to account {holder}" for ns, holder in held.items())
                + "; remove each from this CreditAccount or from its holder's"
            )
        return Readiness(False, NAMESPACE_TAKEN, message)
    if account_exists and bound == set(wanted.namespaces):
        return Readiness(True, "Synced", f"account {name} open; {len(bound)} namespace(s) may charge it")
    return Readiness(False, "Converging", "Auth or Payment changed while the operator synced; trying again")
