"""Payment: the admin audit trail.

Revision ID: payment_0002
"""

from alembic import op

revision = "payment_0002"
down_revision = "payment_0001"


def upgrade() -> None:
    from aijobs_services.kit.admin_audit import create_admin_actions_table

    create_admin_actions_table()


def downgrade() -> None:
    op.drop_table("admin_actions")
