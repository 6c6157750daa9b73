"""AI: tasks, idempotency keys.

Revision ID: ai_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "ai_0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(128), nullable=False, unique=True),
        sa.Column("account", sa.String(63), nullable=False, index=True),
        sa.Column("pipeline", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("input_object_id", sa.String(40), nullable=False),
        sa.Column("run_at", ts, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_token", sa.String(40), nullable=True),
        sa.Column("lease_expires_at", ts, nullable=True, index=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("result_object_id", sa.String(40), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("reruns", sa.Integer, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False, index=True),
    )
    op.create_index("ix_tasks_due", "tasks", ["state", "run_at"])
    from aijobs_services.kit.migrations_ops import create_idempotency_table

    create_idempotency_table()


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("tasks")
