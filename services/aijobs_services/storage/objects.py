"""Storage's use cases: store an upload, record, commit, delete, list, collect garbage.

Keys are compared and ordered byte by byte (``COLLATE "C"`` on PostgreSQL, SQLite's own
``BINARY``): a prefix is then a range of keys, ``prefix <= key < successor(prefix)``, which an
index scans in order, and a page's ``after`` means the same whatever the database's locale (an
``en_US`` collation would sort ``a-b`` between ``ab`` and ``ac``). A prefix read as a ``LIKE``
pattern would also make ``_`` and ``%`` wildcards; a range has none.

Space is counted, never summed: each account's live bytes are one ``account_usage`` row that a
put moves in the transaction of the record it counts and a delete moves with the state it changes,
so a put's checks read one keyed row and one row per account, however many objects are stored.

The two calls a batch makes per image (the worker fetching its input, then putting its result)
are written as Core statements, in as few round trips to the database as their guarantees allow:
a put is one transaction of an insert and an update (:func:`store_staged`), a read of an object's
bytes one statement (:func:`readable`). The ORM's unit of work, identity map and savepoints cost
more there than the statements themselves (bench/batch.py, py-spy on Storage)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from aijobs_services.kit.db import utcnow
from aijobs_services.kit.problems import Conflict, NotFound, Problem, Unprocessable
from aijobs_services.storage.blobs import BlobStore, DiskFull, Staged, VolumeFlush
from aijobs_services.storage.images import ImageInfo, inspect_image
from aijobs_services.storage.manifests import inspect_manifest
from aijobs_services.storage.models import AccountUsage, StoredObject
from aijobs_services.storage.settings import StorageSettings

LIVE = ("staging", "committed")
OBJECTS = cast("sa.Table", StoredObject.__table__)
USAGE = cast("sa.Table", AccountUsage.__table__)
REFERENCE_CHUNK = 500  # sha256s per indexed lookup: within SQLite's and PostgreSQL's parameter limits

# The statements of a read and a put, built once with bound parameters: building one per call (each
# value coerced to a parameter, the cache key of its compiled form computed) cost as much Python
# as executing it.
_READ = sa.select(OBJECTS.c.sha256, OBJECTS.c.size, OBJECTS.c.content_type, OBJECTS.c.state).where(
    OBJECTS.c.id == sa.bindparam("object_id")
)
_READ_MANY = sa.select(
    OBJECTS.c.id, OBJECTS.c.sha256, OBJECTS.c.size, OBJECTS.c.content_type, OBJECTS.c.state
).where(OBJECTS.c.id.in_(sa.bindparam("object_ids", expanding=True)))
_RECORD = {
    dialect: insert(OBJECTS).on_conflict_do_nothing(index_elements=[OBJECTS.c.key]).returning(OBJECTS.c.id)
    for dialect, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_TAKE = (
    sa.update(USAGE)
    .where(USAGE.c.account == sa.bindparam("owner"))
    .values(bytes=USAGE.c.bytes + sa.bindparam("size"), objects=USAGE.c.objects + sa.bindparam("count"))
)
_TAKE_WITHIN_QUOTA = _TAKE.where(USAGE.c.bytes + sa.bindparam("size") <= sa.bindparam("quota"))


class KeyTaken(Conflict):
    slug, title = "key-taken", "The key already names other content"


class UnknownObject(NotFound):
    slug, title = "unknown-object", "Unknown object"


class ObjectDeleted(Conflict):
    """A deleted object cannot be committed."""

    slug, title = "object-deleted", "Object deleted"


class ObjectGone(NotFound):
    """A deleted object's bytes or link: as if it were not there."""

    slug, title = "object-deleted", "Object deleted"


class ObjectTaken(Conflict):
    slug, title = "object-taken", "Object belongs to another job"


def by_key(session: Session, key: str) -> StoredObject | None:
    return session.scalars(sa.select(StoredObject).where(StoredObject.key == key)).one_or_none()


def find(sessions: sessionmaker[Session], key: str) -> StoredObject | None:
    """The object under ``key``, read in a session of its own (from a thread)."""
    with sessions() as session:
        return by_key(session, key)


def get(session: Session, object_id: str) -> StoredObject:
    obj = session.get(StoredObject, object_id)
    if obj is None:
        raise UnknownObject(f"no object {object_id!r}")
    return obj


def live(session: Session, object_id: str) -> StoredObject:
    """An object whose bytes may still be read."""
    obj = get(session, object_id)
    if obj.state == "deleted":
        raise ObjectGone(f"object {object_id} was deleted")
    return obj


@dataclass(frozen=True)
class Content:
    """What serving an object's bytes needs of its row."""

    sha256: str
    size: int
    content_type: str


def readable(conn: sa.Connection, object_id: str) -> Content:
    """An object whose bytes may still be read, in one statement: no ORM object is built, and
    on a connection in autocommit no transaction is begun and committed around it."""
    row = conn.execute(_READ, {"object_id": object_id}).one_or_none()
    if row is None:
        raise UnknownObject(f"no object {object_id!r}")
    if row.state == "deleted":
        raise ObjectGone(f"object {object_id} was deleted")
    return Content(row.sha256, row.size, row.content_type)


def readable_many(conn: sa.Connection, object_ids: Sequence[str]) -> dict[str, Content | Problem]:
    """:func:`readable` for many objects in one statement: each id's content, or the problem
    reading it alone would raise (an id absent from the answer was not asked)."""
    rows = {row.id: row for row in conn.execute(_READ_MANY, {"object_ids": sorted(set(object_ids))})}
    found: dict[str, Content | Problem] = {}
    for object_id in object_ids:
        row = rows.get(object_id)
        if row is None:
            found[object_id] = UnknownObject(f"no object {object_id!r}")
        elif row.state == "deleted":
            found[object_id] = ObjectGone(f"object {object_id} was deleted")
        else:
            found[object_id] = Content(row.sha256, row.size, row.content_type)
    return found


def get_many(session: Session, object_ids: Sequence[str]) -> dict[str, StoredObject]:
    """:func:`get` for many objects in one statement: each id found, by id (an unknown id is
    absent)."""
    stmt = sa.select(StoredObject).where(StoredObject.id.in_(sorted(set(object_ids))))
    return {obj.id: obj for obj in session.scalars(stmt)}


def same_or_conflict(existing: StoredObject, sha256: str) -> StoredObject:
    if existing.sha256 != sha256:
        raise KeyTaken(
            f"key {existing.key!r} already holds other content (object {existing.id})",
            objectId=existing.id,
            sha256=existing.sha256,
        )
    return existing


def _moved(session: Session, stmt: sa.Update, params: dict[str, Any] | None = None) -> int:
    """Rows a Core update changed; the ORM's identity map is left alone (callers fix it up)."""
    result = session.execute(stmt, params, execution_options={"synchronize_session": False})
    return cast("sa.CursorResult[Any]", result).rowcount


def _open_account(session: Session, account: str) -> None:
    """The account's usage row, created at zero on its first put (a concurrent first put's row
    is waited for, then left as it is)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(USAGE).values(account=account, bytes=0, objects=0).on_conflict_do_nothing())


def reserve(session: Session, account: str, size: int, capacity: int, quota: int, count: int = 1) -> None:
    """Count ``size`` more bytes (and ``count`` more objects) for ``account``, or refuse (507)
    if the volume's ``capacity`` or the account's ``quota`` would be exceeded (0: no limit). The
    quota is checked and taken in one keyed update, which row-locks the account's usage until
    the transaction ends: of two concurrent puts that only one fits, the second sees the first's
    bytes. The capacity is read as it stands (one row per account), as it always was: a limit
    kept before the disk fills; with no capacity set, not read at all."""
    if capacity:
        used = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(USAGE.c.bytes), 0)))
        if int(used or 0) + size > capacity:
            raise DiskFull(
                f"the storage volume's capacity ({capacity} bytes) would be exceeded; nothing was stored"
            )
    params: dict[str, Any] = {"owner": account, "size": size, "count": count}
    take = _TAKE
    if quota:
        take, params["quota"] = _TAKE_WITHIN_QUOTA, quota
    if _moved(session, take, params):
        return
    _open_account(session, account)  # nothing moved: a first put, or over the quota
    if _moved(session, take, params):
        return
    raise DiskFull(f"account {account!r} would exceed its storage quota ({quota} bytes); nothing was stored")


def release(session: Session, account: str, size: int) -> None:
    """Uncount a live object's bytes (its row was made live by a put, so the account's row exists)."""
    _moved(
        session,
        sa.update(USAGE)
        .where(USAGE.c.account == account)
        .values(bytes=USAGE.c.bytes - size, objects=USAGE.c.objects - 1),
    )


class DigestMismatch(Unprocessable):
    slug, title = "digest-mismatch", "The bytes received are not the bytes declared"


@dataclass(frozen=True)
class Incoming:
    """A received file and what to store it as (a put's key, account, job, kind and state), with
    the sha256 its sender declared, if it did."""

    staged: Staged
    key: str
    account: str
    job_id: str | None
    kind: str
    state: str
    sha256: str | None = None
    from_worker: bool = False  # sent by a worker: a result's declared digest vouches for it


Stored = tuple[bool, StoredObject]  # whether it was created, and the object


def _check(item: Incoming, settings: StorageSettings) -> ImageInfo:
    """What the bytes are, or why they are refused (out of any transaction).

    Every image is decoded in full but one: a worker's result whose sender declared the digest
    its encoder computed, and whose bytes hash to it, has its header read (type, size, the
    pixel limits) and not its pixels. Its soundness is the encoder's: the digest, taken in
    memory before the worker spooled it, proves these are the bytes encoded, so a spool file
    truncated or damaged on the worker's disk is refused here, as a decode would refuse it. The
    decode was a sixth of Storage's busy samples for upscale-x2's 384-px results (bench/batch.py
    with py-spy). A user's upload is always decoded: nothing vouches for it."""
    if item.sha256 is not None and item.sha256 != item.staged.sha256:
        raise DigestMismatch(
            f"the bytes received hash to {item.staged.sha256}, not to the declared {item.sha256}; "
            "nothing was stored"
        )
    if item.kind in ("manifest", "list"):
        return inspect_manifest(item.staged.path, item.kind)
    vouched = item.kind == "result" and item.sha256 is not None and item.from_worker
    return inspect_image(
        item.staged.path, max_pixels=settings.max_pixels, max_side=settings.max_side, decode=not vouched
    )


def store_staged(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    staged: Staged,
    *,
    key: str,
    account: str,
    job_id: str | None,
    kind: str,
    state: str,
    sha256: str | None = None,
    from_worker: bool = False,
) -> Stored:
    """Check, keep and record a received file; idempotent by ``key``: whether it was created,
    and the object (the first one when the key already held the same bytes). Runs on a thread.

    One transaction: the record is inserted unless its key is taken, then counted, then its
    blob kept, then all committed; a refusal (quota, capacity) rolls the record back, and the
    blob is durable before the commit makes any record point at it. The key is not looked up
    first: a put of a new key (nearly every put) pays no read for the rare retry, which finds its
    key taken at the insert (waiting for a concurrent put of it to end) and is answered with the
    first object. The checks of the bytes (:func:`_check`) come first, out of any transaction; a
    key that already holds an object still answers for it when they fail (its bytes, or a
    conflict), as when the key was read first."""
    item = Incoming(staged, key, account, job_id, kind, state, sha256, from_worker)
    try:
        try:
            info = _check(item, settings)
        except Problem:
            existing = find(sessions, key)
            if existing is None:
                raise
            return False, same_or_conflict(existing, staged.sha256)
        blobs.sync(staged)
        return _keep_one(sessions, blobs, settings, item, info)
    finally:
        blobs.discard(staged)


def _keep_one(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    item: Incoming,
    info: ImageInfo,
) -> Stored:
    """A checked, durable file recorded, counted and kept, in a transaction of its own."""
    # A manifest is the operator's receipt for a batch already charged: the account's quota, a
    # definite no, must not strand it (the disk's capacity, which frees up, may).
    quota = 0 if item.kind == "manifest" else settings.account_quota_bytes
    with blobs.sharing(), sessions() as session, session.begin():
        obj = record(session, item, info)
        if obj is None:  # the key is taken: by a retry's first put, or a concurrent one
            taken = by_key(session, item.key)
            assert taken is not None
            return False, same_or_conflict(taken, item.staged.sha256)
        reserve(session, item.account, item.staged.size, settings.capacity_bytes, quota)
        blobs.keep(item.staged)  # durable under its content name before the commit records it
        return True, obj


class _OverLimit(Exception):
    """A bulk put's counted bytes went past an account's quota or the volume's capacity."""


class _Unkept(Exception):
    """The flush that makes a bulk put's new names durable failed (``full``: a full disk), so
    nothing was committed."""

    def __init__(self, full: DiskFull) -> None:
        super().__init__("the new blobs' names could not be made durable")
        self.full = full


def _by_holder(sessions: sessionmaker[Session], item: Incoming, refusal: Problem) -> Stored | Problem:
    """An item not stored answered as its single put would be: by its key's holder, if the key
    has one (the same bytes, or a conflict), else with ``refusal``."""
    existing = find(sessions, item.key)
    return refusal if existing is None else _same(existing, item.staged.sha256)


def store_many(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    incoming: Sequence[Incoming],
    flush: VolumeFlush | None = None,
) -> list[Stored | Problem]:
    """Several received images, each stored as :func:`store_staged` would store it alone and
    answered as if the items' single puts had been made one after the other (its object, or
    the problem its single put would raise), in one transaction for all. Runs on a thread;
    every staged file is gone when it returns.

    Each file is checked, then the sound ones made durable together: one ``flush`` of the volume
    (:class:`~aijobs_services.storage.blobs.VolumeFlush`, opened before the files were written),
    or without one an fsync of each. Then one transaction: the keys looked up in one statement,
    the records of the new ones inserted in one (in key order, so two requests never wait on
    each other's keys crosswise), the new blobs kept together (:meth:`BlobStore.keep_many`: one
    more flush), the bytes and objects each account gained counted in one update, one commit. A
    worker's lease of results cost a transaction, three round trips and a thread hop each
    before. When the flush of the new names fails, nothing is committed and every item is
    answered by its key's holder or refused. When the sum would pass an account's quota or the
    volume's capacity, the transaction is rolled back and the items are stored one by one
    instead, so those that fit are stored and the others refused, as their single puts would be
    (rare: the limits' edge)."""
    checks: dict[int, ImageInfo | Problem] = {}
    try:
        for n, item in enumerate(incoming):
            try:
                checks[n] = _check(item, settings)
            except Problem as refusal:
                checks[n] = refusal
        sound = [n for n in checks if not isinstance(checks[n], Problem)]
        if flush is None:
            for n in sound:
                try:
                    blobs.sync(incoming[n].staged)
                except Problem as refusal:
                    checks[n] = refusal
        elif sound:
            try:
                flush()
            except DiskFull as full:  # the volume's flush failed: none of them is durable
                checks.update(dict.fromkeys(sound, full))
        try:
            return _store_together(sessions, blobs, settings, incoming, checks, flush)
        except _Unkept as unkept:
            unkept_answers: list[Stored | Problem] = []
            for n, item in enumerate(incoming):
                check = checks[n]
                refused = check if isinstance(check, Problem) else unkept.full
                unkept_answers.append(_by_holder(sessions, item, refused))
            return unkept_answers
        except _OverLimit:
            answers: list[Stored | Problem] = []
            for n, item in enumerate(incoming):
                check = checks[n]
                if isinstance(check, Problem):
                    answers.append(_by_holder(sessions, item, check))
                    continue
                try:
                    answers.append(_keep_one(sessions, blobs, settings, item, check))
                except Problem as refusal:
                    answers.append(refusal)
            return answers
    finally:
        for item in incoming:
            blobs.discard(item.staged)


def _store_together(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: StorageSettings,
    incoming: Sequence[Incoming],
    checks: dict[int, ImageInfo | Problem],
    flush: VolumeFlush | None,
) -> list[Stored | Problem]:
    """:func:`store_many`'s transaction: each item's answer, in order; :class:`_OverLimit`
    (nothing committed) if the bytes gained would pass a limit, :class:`_Unkept` (nothing
    committed) if the new blobs' names could not be made durable."""
    with blobs.sharing(), sessions() as session, session.begin():
        held = by_keys(session, [item.key for item in incoming])  # before this request
        new: dict[str, int] = {}  # key -> the item that creates it: the first sound one
        for n, item in enumerate(incoming):
            if not isinstance(checks[n], Problem) and item.key not in held:
                new.setdefault(item.key, n)
        rows = {n: _values(incoming[n], cast("ImageInfo", checks[n]), utcnow()) for n in sorted(new.values())}
        inserted = record_many(session, sorted(rows.values(), key=lambda values: values["key"]))
        late = by_keys(session, [key for key, n in new.items() if rows[n]["id"] not in inserted])
        answers: list[Stored | Problem] = []
        seen = dict(held)  # each key's holder as the items before this one left it
        gained: dict[str, tuple[int, int]] = {}  # account -> (bytes, objects)
        keeping: list[Staged] = []  # the new objects' files
        for n, item in enumerate(incoming):
            check = checks[n]
            values = rows.get(n)
            if values is not None and values["id"] in inserted:
                obj = StoredObject(**values)
                answers.append((True, obj))
                seen[item.key] = obj
                size, count = gained.get(item.account, (0, 0))
                gained[item.account] = (size + item.staged.size, count + 1)
                keeping.append(item.staged)
                continue
            holder = seen.get(item.key) or late.get(item.key)  # late: a concurrent put's
            if isinstance(check, Problem):
                answers.append(check if holder is None else _same(holder, item.staged.sha256))
                continue
            assert holder is not None  # its key was held, created before it here, or taken meanwhile
            seen[item.key] = holder
            answers.append(_same(holder, item.staged.sha256))
        try:  # durable under their content names before the commit; before the usage rows lock
            blobs.keep_many(keeping, flush)
        except DiskFull as full:
            raise _Unkept(full) from full
        capacity, quota = settings.capacity_bytes, settings.account_quota_bytes
        for account in sorted(gained):  # usage rows locked in one order, as every sweep takes them
            size, count = gained[account]
            try:
                reserve(session, account, size, capacity, quota, count)
            except DiskFull as exc:
                raise _OverLimit from exc
    return answers


def _same(holder: StoredObject, sha256: str) -> Stored | Problem:
    try:
        return False, same_or_conflict(holder, sha256)
    except KeyTaken as conflict:
        return conflict


def by_keys(session: Session, keys: Sequence[str]) -> dict[str, StoredObject]:
    """The objects under these keys, in one statement (a key that holds none is absent)."""
    if not keys:
        return {}
    stmt = sa.select(StoredObject).where(StoredObject.key.in_(sorted(set(keys))))
    return {obj.key: obj for obj in session.scalars(stmt)}


def _values(item: Incoming, info: ImageInfo, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": f"obj-{uuid.uuid4().hex[:20]}",
        "key": item.key,
        "account": item.account,
        "job_id": item.job_id,
        "kind": item.kind,
        "sha256": item.staged.sha256,
        "size": item.staged.size,
        "content_type": info.content_type,
        "width": info.width,
        "height": info.height,
        "state": item.state,
        "created_at": now,
        "committed_at": now if item.state == "committed" else None,
    }


def record(session: Session, item: Incoming, info: ImageInfo) -> StoredObject | None:
    """Insert an object's row, or nothing if its key is taken (None): a concurrent insert of the
    key is waited for, and counts as taken once committed. The object returned is built from the
    values inserted, outside the session: nothing loads it back."""
    values = _values(item, info, utcnow())
    insert = _RECORD[session.get_bind().dialect.name]
    if session.execute(insert, values).scalar_one_or_none() is None:
        return None
    return StoredObject(**values)


def record_many(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """:func:`record` for many rows (:func:`_values`) in one statement: the ids inserted. A
    row whose key is taken inserts nothing."""
    if not rows:
        return set()
    insert = _RECORD[session.get_bind().dialect.name]
    return {row.id for row in session.execute(insert, list(rows))}  # insertmanyvalues: one statement


def commit(session: Session, object_id: str, job_id: str) -> StoredObject:
    # Row-locked: a delete racing this commit is seen, not overwritten back to live (its bytes
    # already uncounted).
    obj = session.get(StoredObject, object_id, with_for_update=True)
    if obj is None:
        raise UnknownObject(f"no object {object_id!r}")
    if obj.state == "deleted":
        raise ObjectDeleted(f"object {object_id} was deleted")
    if obj.job_id not in (None, job_id):
        raise ObjectTaken(f"object {object_id} belongs to job {obj.job_id}")
    if obj.state == "staging":
        obj.state, obj.job_id, obj.committed_at = "committed", job_id, utcnow()
    obj.job_id = job_id
    session.flush()
    return obj


def delete(session: Session, obj: StoredObject) -> StoredObject:
    """Mark a live object deleted and uncount its bytes. Conditional on the row as stored: of two
    deletes racing (a caller's and the collector's expiry, or two callers'), only the one whose
    update moves the row uncounts it."""
    if obj.state == "deleted":
        return obj
    now = utcnow()
    gone = (
        sa.update(StoredObject)
        .where(StoredObject.id == obj.id, StoredObject.state != "deleted")
        .values(state="deleted", deleted_at=now)
    )
    if _moved(session, gone):
        release(session, obj.account, obj.size)
        set_committed_value(obj, "state", "deleted")
        set_committed_value(obj, "deleted_at", now)
    else:
        session.refresh(obj)  # another delete won: answer with its row
    return obj


def job_query(job_id: str, *, after: str | None = None, limit: int | None = None) -> sa.Select[Any]:
    """A job's objects in the order they were stored; a page of them in id order when ``after``
    or ``limit`` is given (the ``(job_id, id)`` index reads it, however many the job has)."""
    stmt = sa.select(StoredObject).where(StoredObject.job_id == job_id)
    if after is None and limit is None:
        return stmt.order_by(StoredObject.created_at)
    if after is not None:
        stmt = stmt.where(StoredObject.id > after)
    return stmt.order_by(StoredObject.id).limit(limit)


def for_job(session: Session, job_id: str) -> list[StoredObject]:
    """All of :func:`job_query`'s objects, to change them."""
    return list(session.scalars(job_query(job_id)))


# What callers see of an object (:class:`aijobs.api.storage.StoredObject`): read as plain rows
# for a listing, which builds no ORM object per row (a batch's finishing pass lists 10,000 inputs
# and results, twice; loading each as an ORM object, then copying it into the answer's model,
# was most of Storage's time there).
PUBLIC_COLUMNS = [
    OBJECTS.c[name]
    for name in (
        "id",
        "key",
        "account",
        "job_id",
        "kind",
        "sha256",
        "size",
        "content_type",
        "width",
        "height",
        "state",
        "created_at",
    )
]

PUBLIC_NAMES = tuple(column.name for column in PUBLIC_COLUMNS)


def public_rows(session: Session, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
    """The rows of a listing of objects, as the columns callers see (:data:`PUBLIC_COLUMNS`).
    Executed on the session's connection, a Core read: no ORM loading step for each row; and
    each row zipped with the columns' names rather than read through a mapping's keys. It sees
    what is flushed (a Core read does not autoflush): for a listing's fresh transaction."""
    rows = session.connection().execute(stmt.with_only_columns(*PUBLIC_COLUMNS)).all()
    return [dict(zip(PUBLIC_NAMES, row, strict=True)) for row in rows]


def bytewise(dialect: str) -> sa.ColumnElement[str]:
    """The key as compared byte by byte: SQLite compares text so already (``BINARY``)."""
    if dialect == "postgresql":
        return sa.collate(StoredObject.key, "C")
    return StoredObject.key.expression


def successor(prefix: str) -> str:
    """The least text greater than every text that starts with ``prefix``, in code point order
    (UTF-8's byte order): the prefix with its last character's successor, past a last
    character that has none."""
    head = prefix.rstrip(chr(0x10FFFF))
    if not head:
        raise ValueError("a prefix of only U+10FFFF has no successor")
    return head[:-1] + chr(ord(head[-1]) + 1)


def inputs_query(
    dialect: str,
    account: str,
    prefix: str,
    *,
    created_before: dt.datetime | None,
    after: str | None,
    limit: int,
) -> sa.Select[StoredObject]:
    """A page of an account's committed inputs owned by no job, whose keys start with
    ``prefix``, past the key ``after``, in key order; only those created at or before
    ``created_before`` when given, so that a batch's set listed again later is the same set.
    On PostgreSQL the
    ``(account, key COLLATE "C")`` index reads it in order and stops at ``limit``."""
    key = bytewise(dialect)
    stmt = sa.select(StoredObject).where(
        StoredObject.account == account,
        key >= prefix,
        key < successor(prefix),
        StoredObject.state == "committed",
        StoredObject.kind == "input",
        # An input a job owns (a single job's upload, committed with its job's id) is that
        # job's, to delete with it: never part of a set, which must stay what it was.
        StoredObject.job_id.is_(None),
    )
    if after is not None:
        stmt = stmt.where(key > after)
    if created_before is not None:
        stmt = stmt.where(StoredObject.created_at <= created_before)
    return stmt.order_by(key).limit(limit)


def inputs_under(
    session: Session,
    account: str,
    prefix: str,
    *,
    created_before: dt.datetime | None,
    after: str | None,
    limit: int,
) -> list[StoredObject]:
    """:func:`inputs_query`'s objects."""
    dialect = session.get_bind().dialect.name
    stmt = inputs_query(dialect, account, prefix, created_before=created_before, after=after, limit=limit)
    return list(session.scalars(stmt))


def referenced(session: Session, shas: Sequence[str]) -> set[str]:
    """Which of ``shas`` a live object points at: lookups on the ``sha256`` index, a chunk at a
    time, never the whole live set."""
    found: set[str] = set()
    for start in range(0, len(shas), REFERENCE_CHUNK):
        chunk = shas[start : start + REFERENCE_CHUNK]
        found.update(
            session.scalars(
                sa.select(StoredObject.sha256)
                .where(StoredObject.sha256.in_(chunk), StoredObject.state.in_(LIVE))
                .distinct()
            )
        )
    return found


def unreferenced_blobs(session: Session, blobs: BlobStore, horizon: float) -> list[str]:
    """Blobs the collector may remove: last kept before ``horizon`` and, when looked up, used by
    no live object. Read with no lock, so puts go on meanwhile: a blob spared here is only left
    for the next sweep, and one found here is checked again under the lock
    (:func:`remove_unreferenced`)."""
    old = [sha for sha, mtime in blobs.all_blobs() if mtime < horizon]
    with session.begin():
        used = referenced(session, old)
    return [sha for sha in old if sha not in used]


def remove_unreferenced(session: Session, blobs: BlobStore, suspects: Sequence[str], horizon: float) -> int:
    """Remove those of ``suspects`` still unused and still old. Under the volume's exclusive lock
    no put is between keeping a blob and committing its record, so a blob taken up again since
    the listing is either recorded (the lookup sees it) or kept afresh (its time is young)."""
    removed = 0
    with blobs.collecting():
        with session.begin():
            used = referenced(session, suspects)
        for sha in suspects:
            mtime = blobs.kept_at(sha)
            if sha not in used and mtime is not None and mtime < horizon and blobs.remove(sha):
                removed += 1
    return removed


def collect(session: Session, blobs: BlobStore, staging_grace: int, deleted_grace: int) -> int:
    """Delete uncommitted uploads past their grace, then remove blob files no live object
    references (older than ``deleted_grace``, so a blob being recorded right now is spared),
    looking at every blob on the volume. A committed object is never touched here: only its
    job's compensation deletes it."""
    now = utcnow()
    removed = expire_staging(session, staging_grace, now)
    horizon = now.timestamp() - deleted_grace
    removed += remove_unreferenced(session, blobs, unreferenced_blobs(session, blobs, horizon), horizon)
    for tmp in blobs.stale_temp_files(horizon):
        tmp.unlink(missing_ok=True)
    return removed


def deleted_between(session: Session, since: dt.datetime, until: dt.datetime) -> list[str]:
    """The blobs of the objects deleted in ``[since, until)``, read on the partial index of
    deletions (``ix_objects_deleted_at``)."""
    return list(
        session.scalars(
            sa.select(StoredObject.sha256)
            .where(
                StoredObject.state == "deleted",
                StoredObject.deleted_at >= since,
                StoredObject.deleted_at < until,
            )
            .distinct()
        )
    )


@dataclass
class Collector:
    """One Storage process's garbage collection, sweep after sweep, at a cost that follows what
    changed rather than what is stored.

    A blob loses its last object in one of two ways: the object is deleted (a job's compensation,
    an expired upload), or a put died between keeping the blob and committing its record (a
    crash, the database gone). The first leaves a row: each sweep looks only at the blobs of the
    objects deleted since the one before, through an index. The second leaves nothing to find
    but the file: a scan of the whole volume, at this process's first sweep and then once every
    ``scan_every`` seconds. (Every sweep scanning the volume cost Storage a fifth of its CPU at
    12,000 blobs, py-spy on bench/batch.py, and grew with every image stored.)

    A deletion is looked at once its grace has passed; each window reaches back ``_OVERLAP``
    before the previous one's end, so a delete whose transaction committed after the previous
    sweep read past its time is still seen. Replicas each keep their own: a removal is checked
    under the volume's lock (:func:`remove_unreferenced`), so two agree."""

    scan_every: float
    clock: Callable[[], float] = time.monotonic
    since: dt.datetime | None = None  # deletions before this were looked at
    scanned_at: float | None = None  # when the volume was last scanned whole (``clock``)

    def sweep(self, session: Session, blobs: BlobStore, staging_grace: int, deleted_grace: int) -> int:
        """One sweep: expired uploads deleted, unreferenced blobs removed; how many of both."""
        now = utcnow()
        until = now - dt.timedelta(seconds=deleted_grace)
        if self.since is None or self.scanned_at is None or self.clock() - self.scanned_at >= self.scan_every:
            removed = collect(session, blobs, staging_grace, deleted_grace)
            self.scanned_at, self.since = self.clock(), until
            return removed
        removed = expire_staging(session, staging_grace, now)
        with session.begin():
            suspects = deleted_between(session, self.since - _OVERLAP, until)
        horizon = until.timestamp()
        removed += remove_unreferenced(session, blobs, suspects, horizon)
        self.since = until
        return removed


_OVERLAP = dt.timedelta(seconds=60)


def expire_staging(session: Session, staging_grace: int, now: dt.datetime) -> int:
    """Delete the uploads left uncommitted past their grace; how many."""
    removed = 0
    with session.begin():
        stale = session.scalars(
            sa.select(StoredObject)
            .where(
                StoredObject.state == "staging",
                StoredObject.created_at < now - dt.timedelta(seconds=staging_grace),
            )
            .order_by(StoredObject.account)  # usage rows taken in one order, as any other sweep's
            .with_for_update(skip_locked=True)
        ).all()
        for obj in stale:
            delete(session, obj)
            removed += 1
    return removed
