"""AI's tables: one task per job (per job and image for a batch), with its lease."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aijobs_services.kit.idempotency import idempotency_table


class AIBase(DeclarativeBase):
    pass


class Task(AIBase):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.String(128))
    # The image's index in a batch job; NULL for a single-image job's one task.
    item: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    account: Mapped[str] = mapped_column(sa.String(63), index=True)
    pipeline: Mapped[str] = mapped_column(sa.String(32))
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    input_object_id: Mapped[str] = mapped_column(sa.String(40))
    run_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    # scheduled -> running -> succeeded | failed; scheduled | running -> cancelled
    state: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=5)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True, index=True
    )
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    result_object_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Runs started again because an earlier lease expired without a stored result (I2).
    reruns: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)

    __table_args__ = (
        sa.Index("ix_tasks_due", "state", "run_at"),
        # One task per job and item, ever; the single-image job's NULL item counted as -1, so
        # that it too is unique (NULLs are distinct in a plain unique index). It serves the
        # lookups by job too.
        sa.Index("uq_tasks_job_item", job_id, sa.func.coalesce(item, -1), unique=True),
    )


IdempotencyKeys = idempotency_table(AIBase.metadata)
