"""Auth: the admin audit trail.

Revision ID: auth_0002
"""

from alembic import op

revision = "auth_0002"
down_revision = "auth_0001"


def upgrade() -> None:
    from aijobs_services.kit.admin_audit import create_admin_actions_table

    create_admin_actions_table()


def downgrade() -> None:
    op.drop_table("admin_actions")
