"""Payment's tables. Balances are cached on the account row (for cheap, locked checks) and are
always derivable from the immutable ledger; ``ledger.check`` proves the two agree."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aijobs_services.kit.admin_audit import admin_actions_table
from aijobs_services.kit.idempotency import idempotency_table


class PaymentBase(DeclarativeBase):
    pass


class Account(PaymentBase):
    __tablename__ = "accounts"
    __table_args__ = (
        sa.CheckConstraint("available >= 0", name="available_never_negative"),
        sa.CheckConstraint("held >= 0", name="held_never_negative"),
    )

    id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    available: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    held: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class Hold(PaymentBase):
    __tablename__ = "holds"
    __table_args__ = (sa.CheckConstraint("amount > 0", name="hold_amount_positive"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    # active -> captured | released | expired; the last three are final.
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    settled_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # What a capture charged (all of ``amount`` or a part, the rest released); 0 unless captured.
    captured_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class LedgerEntry(PaymentBase):
    """One leg of a ledger transaction. The legs of a transaction sum to zero; rows are never
    updated or deleted."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    txn_id: Mapped[str] = mapped_column(sa.String(40), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # top-up, hold, capture, release, expire
    book: Mapped[str] = mapped_column(sa.String(80), index=True)  # "<account>:available" etc.
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    hold_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


IdempotencyKeys = idempotency_table(PaymentBase.metadata)
AdminActions = admin_actions_table(PaymentBase.metadata)
