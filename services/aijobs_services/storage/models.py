"""Storage's tables: one row per logical object; blobs are files named by their sha256."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aijobs_services.kit.idempotency import idempotency_table


class StorageBase(DeclarativeBase):
    pass


class StoredObject(StorageBase):
    __tablename__ = "objects"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), unique=True)  # the caller's idempotent name
    account: Mapped[str] = mapped_column(sa.String(63), index=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # input | result | manifest
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    content_type: Mapped[str] = mapped_column(sa.String(64))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    # staging -> committed -> deleted (staging -> deleted by the collector after a grace period)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    committed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class AccountUsage(StorageBase):
    """An account's live bytes (its staging and committed objects, manifests included), moved in
    the same transaction as the object rows it sums: a put's quota check is then one keyed row,
    and the volume's use the sum of one row per account, however many objects they hold."""

    __tablename__ = "account_usage"

    account: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    objects: Mapped[int] = mapped_column(sa.BigInteger)


# A batch's inputs, listed by account and key prefix in byte order (objects.inputs_query): the
# range scan needs the key's bytewise order in the index, not the database's locale. The
# collation rides in ``postgresql_ops`` (PostgreSQL's ``column [COLLATE c] [opclass]``) so the
# index stays one over two columns, as PostgreSQL reflects it. SQLite compares text bytewise
# already: its unique index on the key serves there.
sa.Index(
    "ix_objects_account_bytewise_key",
    StoredObject.account,
    StoredObject.key,
    postgresql_ops={"key": 'COLLATE "C"'},
).ddl_if(dialect="postgresql")
# A job's objects page by page (objects.for_job with a limit): in id order within the job.
sa.Index("ix_objects_job_id_id", StoredObject.job_id, StoredObject.id)
# The collector's sweep: the objects deleted since its last (objects.deleted_between).
sa.Index(
    "ix_objects_deleted_at",
    StoredObject.deleted_at,
    postgresql_where=StoredObject.state == "deleted",
    sqlite_where=StoredObject.state == "deleted",
)

IdempotencyKeys = idempotency_table(StorageBase.metadata)
