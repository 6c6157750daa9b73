"""Main API: the slots submissions reserve among their account's jobs in flight.

Revision ID: main_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "main_0002"
down_revision = "main_0001"


def upgrade() -> None:
    op.create_table(
        "submission_slots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account", sa.String(63), nullable=False, index=True),
        sa.Column("job_name", sa.String(253), nullable=False),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("submission_slots")
