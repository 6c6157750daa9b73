"""AI: a batch job's tasks, one per image: ``tasks.item``, unique with the job.

Revision ID: ai_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "ai_0002"
down_revision = "ai_0001"

# SQLite's unique constraint from 0001 has no name: batch mode names it by this convention.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _job_unique() -> str:
    return "tasks_job_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_tasks_job_id"


def upgrade() -> None:
    with op.batch_alter_table("tasks", naming_convention=_NAMING) as batch:
        batch.add_column(sa.Column("item", sa.Integer, nullable=True))
        batch.drop_constraint(_job_unique(), type_="unique")
    op.create_index("uq_tasks_job_item", "tasks", ["job_id", sa.text("coalesce(item, -1)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_tasks_job_item", "tasks")
    with op.batch_alter_table("tasks", naming_convention=_NAMING) as batch:
        batch.drop_column("item")
        batch.create_unique_constraint(_job_unique(), ["job_id"])
