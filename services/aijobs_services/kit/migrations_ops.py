"""Migration steps shared by every service's migrations."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aijobs_services.kit.idempotency import MAX_KEY_LENGTH


def create_idempotency_table() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "idempotency_keys",
        sa.Column("caller", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("response_body", sa.Text, nullable=True),
        sa.Column("response_media_type", sa.String(64), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
