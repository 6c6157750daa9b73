"""Main API's tables: webhooks and the delivery notifications owed to them (an outbox), and the
slots submissions reserve among their account's jobs in flight."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aijobs_services.kit.idempotency import idempotency_table


class MainBase(DeclarativeBase):
    pass


class Webhook(MainBase):
    __tablename__ = "webhooks"
    account: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class Delivery(MainBase):
    """A job's delivery, recorded once (by its id) and notified until the webhook says 2xx."""

    __tablename__ = "deliveries"
    id: Mapped[str] = mapped_column(sa.String(160), primary_key=True)  # the job's uid
    namespace: Mapped[str] = mapped_column(sa.String(63))
    name: Mapped[str] = mapped_column(sa.String(253))
    account: Mapped[str] = mapped_column(sa.String(63), index=True)
    result_url: Mapped[str] = mapped_column(sa.String(4096))
    state: Mapped[str] = mapped_column(
        sa.String(16), index=True
    )  # pending | sent | no-webhook | gave-up | refused
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    sent_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class SubmissionSlot(MainBase):
    """A job being submitted, counted in its account's jobs in flight from admission until its
    AIImageJob exists or the submission is refused (see :mod:`aijobs_services.main.limits`)."""

    __tablename__ = "submission_slots"
    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    account: Mapped[str] = mapped_column(sa.String(63), index=True)
    job_name: Mapped[str] = mapped_column(sa.String(253))
    reserved_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


IdempotencyKeys = idempotency_table(MainBase.metadata)
