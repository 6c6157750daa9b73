"""Storage: each account's live bytes in a row of its own, summed once from the live objects.

Revision ID: storage_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "storage_0003"
down_revision = "storage_0002"


def upgrade() -> None:
    op.create_table(
        "account_usage",
        sa.Column("account", sa.String(63), primary_key=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("objects", sa.BigInteger(), nullable=False),
    )
    # The one full scan, at upgrade: from here on every put and delete moves its account's row.
    op.execute(
        "INSERT INTO account_usage (account, bytes, objects) "
        "SELECT account, SUM(size), COUNT(*) FROM objects "
        "WHERE state IN ('staging', 'committed') GROUP BY account"
    )


def downgrade() -> None:
    op.drop_table("account_usage")
