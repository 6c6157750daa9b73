"""Payment: accounts, holds, the ledger, idempotency keys.

Revision ID: payment_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "payment_0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("available", sa.BigInteger, nullable=False),
        sa.Column("held", sa.BigInteger, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.CheckConstraint("available >= 0", name="available_never_negative"),
        sa.CheckConstraint("held >= 0", name="held_never_negative"),
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(63), sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("job_id", sa.String(128), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("expires_at", ts, nullable=False, index=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("settled_at", ts, nullable=True),
        sa.CheckConstraint("amount > 0", name="hold_amount_positive"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("txn_id", sa.String(40), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("book", sa.String(80), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.String(40), nullable=True, index=True),
        sa.Column("job_id", sa.String(128), nullable=True, index=True),
        sa.Column("created_at", ts, nullable=False),
    )
    from aijobs_services.kit.migrations_ops import create_idempotency_table

    create_idempotency_table()


def downgrade() -> None:
    for table in ("idempotency_keys", "ledger_entries", "holds", "accounts"):
        op.drop_table(table)
