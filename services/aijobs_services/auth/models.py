"""Auth's tables."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aijobs_services.kit.admin_audit import admin_actions_table
from aijobs_services.kit.idempotency import idempotency_table


class AuthBase(DeclarativeBase):
    pass


class Tenant(AuthBase):
    """A tenant is a credit account's owner; its id is the Payment account id."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class User(AuthBase):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class Token(AuthBase):
    """An API token. Only an Argon2 hash of its secret part is kept; the token is shown once."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # user | service
    subject: Mapped[str] = mapped_column(sa.String(63), index=True)  # user id or service name
    tenant_id: Mapped[str | None] = mapped_column(sa.String(63), nullable=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class Binding(AuthBase):
    """Namespace ``namespace`` may charge account ``account_id``.

    A namespace charges one account at most: otherwise a manifest in one tenant's namespace could
    spend another tenant's credits. The unique index is the guard, whatever the callers do."""

    __tablename__ = "bindings"
    __table_args__ = (sa.Index("uq_bindings_namespace", "namespace", unique=True),)
    namespace: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


IdempotencyKeys = idempotency_table(AuthBase.metadata)
AdminActions = admin_actions_table(AuthBase.metadata)
