"""Storage: objects, idempotency keys.

Revision ID: storage_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "storage_0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "objects",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(255), nullable=False, unique=True),
        sa.Column("account", sa.String(63), nullable=False, index=True),
        sa.Column("job_id", sa.String(128), nullable=True, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("committed_at", ts, nullable=True),
        sa.Column("deleted_at", ts, nullable=True),
    )
    from aijobs_services.kit.migrations_ops import create_idempotency_table

    create_idempotency_table()


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("objects")
