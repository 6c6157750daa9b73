"""Payment: partial captures. A hold records what its capture charged; a hold captured before
this revision charged all of its amount.

Revision ID: payment_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "payment_0003"
down_revision = "payment_0002"


def upgrade() -> None:
    op.add_column("holds", sa.Column("captured_amount", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("UPDATE holds SET captured_amount = amount WHERE state = 'captured'")


def downgrade() -> None:
    op.drop_column("holds", "captured_amount")
