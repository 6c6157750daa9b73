"""An audit trail of what admins did (credits added, tenants, users, tokens, bindings), written
in the same transaction as the action itself (a replayed request adds no second line), and
readable by an admin at ``GET /v1/admin/audit``, page by page: each page's ``next`` is the
``before`` of the one after it, so the whole trail can be read however long it grows."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import sqlalchemy as sa
from alembic import op
from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from aijobs_services.kit.app import SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.fields import MAX_ROW_ID

__all__ = ["admin_actions_table", "audit_router", "create_admin_actions_table", "record"]

Admin = Annotated[Caller, Depends(allow("admin"))]


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("caller", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    ]


def admin_actions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table("admin_actions", metadata, *_columns())


def create_admin_actions_table() -> None:
    """The migration step (each service's own migration calls it)."""
    op.create_table("admin_actions", *_columns())


def record(session: Session, table: sa.Table, caller: str, action: str, target: str, **detail: Any) -> None:
    session.execute(
        table.insert().values(
            at=dt.datetime.now(dt.UTC),
            caller=caller,
            action=action,
            target=target[:200],
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )


def audit_router(table: sa.Table) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["audit"])

    @router.get("/audit", summary="What admins did, newest first")
    def audit(
        _: Admin,
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        action: Annotated[str | None, Query(max_length=64)] = None,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_ROW_ID, description="Only entries older than this id (next)")
        ] = None,
    ) -> dict[str, Any]:
        stmt = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if action:
            stmt = stmt.where(table.c.action == action)
        if before is not None:
            stmt = stmt.where(table.c.id < before)
        with session.begin():
            rows = session.execute(stmt).mappings().all()
        return {
            "items": [
                {
                    "id": row["id"],
                    "at": row["at"].isoformat(),
                    "caller": row["caller"],
                    "action": row["action"],
                    "target": row["target"],
                    "detail": json.loads(row["detail"]),
                }
                for row in rows
            ],
            "next": rows[-1]["id"] if len(rows) == limit else None,
        }

    return router
