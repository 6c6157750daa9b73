"""Main API: webhooks, deliveries, idempotency keys.

Revision ID: main_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "main_0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "webhooks",
        sa.Column("account", sa.String(63), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("account", sa.String(63), nullable=False, index=True),
        sa.Column("result_url", sa.String(4096), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", ts, nullable=False, index=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("sent_at", ts, nullable=True),
    )
    from aijobs_services.kit.migrations_ops import create_idempotency_table

    create_idempotency_table()


def downgrade() -> None:
    for table in ("idempotency_keys", "deliveries", "webhooks"):
        op.drop_table(table)
