"""The Payment service, as the kit's app factory assembles it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session

from aijobs_services.kit.admin_audit import audit_router
from aijobs_services.kit.app import ServiceSpec
from aijobs_services.payment import ledger
from aijobs_services.payment.api import router
from aijobs_services.payment.models import AdminActions, IdempotencyKeys


def expire_holds(session: Session, _: FastAPI) -> int:
    with session.begin():
        return ledger.expire_due(session)


SPEC = ServiceSpec(
    name="payment",
    title="aijobs Payment",
    description="Credit accounts on a double-entry ledger; holds, captures and releases.",
    routers=[router, audit_router(AdminActions)],
    idempotency_table=IdempotencyKeys,
    migrations=Path(__file__).parent / "migrations",
    sweeps=[expire_holds],
)
