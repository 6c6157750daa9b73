"""Auth: tenants, users, tokens, bindings, idempotency keys.

Revision ID: auth_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(63), nullable=False, index=True),
        sa.Column("tenant_id", sa.String(63), nullable=True),
        sa.Column("secret_hash", sa.String(200), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
    )
    op.create_table(
        "bindings",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("account_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("created_at", ts, nullable=False),
    )
    from aijobs_services.kit.migrations_ops import create_idempotency_table

    create_idempotency_table()


def downgrade() -> None:
    for table in ("idempotency_keys", "bindings", "tokens", "users", "tenants"):
        op.drop_table(table)
