"""Storage: indexes for batch jobs: an account's keys in byte order, a job's objects by id.

Revision ID: storage_0002
"""

from alembic import op

revision = "storage_0002"
down_revision = "storage_0001"


def upgrade() -> None:
    # A prefix is a key range compared with COLLATE "C" (objects.inputs_under): only an index in
    # that order serves it. SQLite compares bytewise already, through the key's unique index.
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_objects_account_bytewise_key",
            "objects",
            ["account", "key"],
            postgresql_ops={"key": 'COLLATE "C"'},
        )
    op.create_index("ix_objects_job_id_id", "objects", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_objects_job_id_id", table_name="objects")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_objects_account_bytewise_key", table_name="objects")
