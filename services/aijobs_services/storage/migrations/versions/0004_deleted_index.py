"""Storage: a partial index of deleted objects by time, for the collector's sweeps.

Revision ID: storage_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "storage_0004"
down_revision = "storage_0003"


def upgrade() -> None:
    # Each sweep reads the objects deleted since the one before (objects.deleted_between) rather
    # than scanning the volume; only deleted rows are in the index.
    deleted = sa.text("state = 'deleted'")
    op.create_index(
        "ix_objects_deleted_at", "objects", ["deleted_at"], postgresql_where=deleted, sqlite_where=deleted
    )


def downgrade() -> None:
    op.drop_index("ix_objects_deleted_at", table_name="objects")
