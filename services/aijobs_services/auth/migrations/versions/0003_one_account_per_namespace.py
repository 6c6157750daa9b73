"""Auth: a namespace is bound to one account at most (a unique index on ``bindings.namespace``).

Before it, a namespace could be bound to two accounts, and a manifest in it could charge either.
Where a namespace already has several bindings, the earliest created one is kept (ties go to the
lowest account id) and the others are deleted, each named in the log: their CreditAccounts then
show the namespace as taken, and an admin decides who keeps it. A unique index rather than a
constraint, because SQLite adds one without rebuilding the table.

Revision ID: auth_0003
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "auth_0003"
down_revision = "auth_0002"

log = logging.getLogger("alembic.runtime.migration")

bindings = sa.table("bindings", sa.column("namespace"), sa.column("account_id"), sa.column("created_at"))


def upgrade() -> None:
    earlier = bindings.alias("earlier")
    superseded = sa.exists().where(
        earlier.c.namespace == bindings.c.namespace,
        sa.or_(
            earlier.c.created_at < bindings.c.created_at,
            sa.and_(
                earlier.c.created_at == bindings.c.created_at, earlier.c.account_id < bindings.c.account_id
            ),
        ),
    )
    conn = op.get_bind()
    for namespace, account in conn.execute(
        sa.select(bindings.c.namespace, bindings.c.account_id).where(superseded)
    ):
        log.warning("unbinding namespace %s from account %s: an earlier account holds it", namespace, account)
    op.execute(bindings.delete().where(superseded))
    op.create_index("uq_bindings_namespace", "bindings", ["namespace"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_bindings_namespace", table_name="bindings")
