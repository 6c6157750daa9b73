"""The Auth service, as the kit's app factory assembles it."""

from __future__ import annotations

from pathlib import Path

from aijobs_services.auth.api import router
from aijobs_services.auth.models import AdminActions, IdempotencyKeys
from aijobs_services.kit.admin_audit import audit_router
from aijobs_services.kit.app import ServiceSpec

SPEC = ServiceSpec(
    name="auth",
    title="aijobs Auth",
    description="Tenants, users, API tokens, service identities and namespace-to-account bindings.",
    routers=[router, audit_router(AdminActions)],
    idempotency_table=IdempotencyKeys,
    migrations=Path(__file__).parent / "migrations",
)
