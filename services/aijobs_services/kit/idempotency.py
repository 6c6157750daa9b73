"""``Idempotency-Key``: a request acts once, however often it is sent.

The first request with a key inserts a row (caller, key, fingerprint of method, path and body)
and, **in the same database transaction** as the business change, stores the response. So:

- a replay with the same key and body returns the stored response (same status and body) with
  ``Idempotent-Replayed: true``, and acts again never;
- the same key with another body is refused (422 ``idempotency-key-reused``);
- two concurrent requests with one key never both act: on PostgreSQL the second one's INSERT
  waits on the first one's uncommitted row, then sees it committed and replays it; on SQLite the
  write transaction is taken at BEGIN;
- a business refusal (a 4xx :class:`Problem`) is stored too, after rolling back to a savepoint,
  so a retry gets the same answer; an unexpected failure (5xx) rolls everything back, key
  included, so the retry really runs again.

A key is scoped to its caller and lives for the retention, by the clock the store is given
(the app's, so a test or the simulator moves time itself); then it is swept, or freed on reuse.
:meth:`IdempotencyStore.once` decides and answers a plain :class:`Answer`;
:meth:`IdempotencyStore.run` is the HTTP face the routes call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aijobs.api.bulk import BulkAnswer, ItemAnswer
from aijobs_services.kit.callers import CallerDep
from aijobs_services.kit.problems import PROBLEM_JSON, BadRequest, Conflict, Problem, Unprocessable

__all__ = [
    "Answer",
    "BulkOp",
    "Clock",
    "IdempotencyStore",
    "IdempotentRequest",
    "IdempotentRequestDep",
    "KeyInProgress",
    "KeyReused",
    "Outcome",
    "Quick",
    "idempotency_table",
    "idempotent_request",
    "item_request",
    "key_problem",
    "read_idempotent_request",
]

MAX_KEY_LENGTH = 200
log = logging.getLogger("aijobs.services.idempotency")


def idempotency_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "idempotency_keys",
        metadata,
        sa.Column("caller", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("response_body", sa.Text, nullable=True),
        sa.Column("response_media_type", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


@dataclass(frozen=True)
class IdempotentRequest:
    caller: str
    key: str
    fingerprint: str
    route: str  # the request's method and path
    template: str = ""  # its route's method and path template (a metric label of bounded size)


async def read_idempotent_request(request: Request, caller: str) -> IdempotentRequest:
    """The key, scope and fingerprint of a mutating request made by ``caller``."""
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise BadRequest(
            "this endpoint changes state and needs an Idempotency-Key header (any unique string "
            "per logical operation; resend the same key when you retry)",
            slug="idempotency-key-missing",
            title="Idempotency-Key required",
        )
    if len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"Idempotency-Key must be printable ASCII and at most {MAX_KEY_LENGTH} characters",
            slug="idempotency-key-invalid",
            title="Invalid Idempotency-Key",
        )
    body = await request.body()
    template = getattr(request.scope.get("route"), "path", request.url.path)
    return item_request(caller, key, request.method, request.url.path, template, body)


def item_request(
    caller: str, key: str, method: str, path: str, template: str, body: bytes
) -> IdempotentRequest:
    """The key, scope and fingerprint of one operation: a single request, or one item of a bulk
    request (:mod:`aijobs.api.bulk`) given the single route's method, concrete path and the
    item's body as a client sends it, so that the two are one operation under one key."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return IdempotentRequest(caller, key, digest.hexdigest(), f"{method} {path}", f"{method} {template}")


async def idempotent_request(request: Request, caller: CallerDep) -> IdempotentRequest:
    return await read_idempotent_request(request, caller.name)


IdempotentRequestDep = Annotated[IdempotentRequest, Depends(idempotent_request)]

# What a use case returns: (HTTP status, JSON-able body). The body may be a Problem: a refusal
# whose side effects (an expiry, say) must commit with it.
Outcome = tuple[int, Any]
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Answer:
    """What a request with a key was answered, as stored: given again on every replay."""

    status: int
    body: Any  # JSON-able
    media_type: str
    replayed: bool = False


class KeyReused(Exception):
    """The key was first used for another request (another route or body)."""

    def __init__(self, key: str, first_route: str) -> None:
        super().__init__(key, first_route)
        self.key, self.first_route = key, first_route


class KeyInProgress(Exception):
    """The first request with this key has not finished (its row holds no answer yet)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def key_problem(exc: KeyReused | KeyInProgress) -> Problem:
    """How a key's refusal is answered: a reused key 422 ``idempotency-key-reused``, a key still
    in progress a 409 to retry after a second."""
    if isinstance(exc, KeyReused):
        return Unprocessable(
            f"Idempotency-Key {exc.key!r} was first used for a different request ({exc.first_route}); "
            "use a new key for a new request",
            slug="idempotency-key-reused",
            title="Idempotency-Key reused with a different request",
        )
    return Conflict(
        f"a request with Idempotency-Key {exc.key!r} is still in progress; retry shortly",
        slug="idempotency-key-in-progress",
        headers={"Retry-After": "1"},
    )


@dataclass(frozen=True)
class Quick:
    """A use case as one PostgreSQL statement for a key seen for the first time: it claims the
    key (the columns of :meth:`IdempotencyStore.claim_row`), acts, stores its answer and returns
    that answer's body as stored (one row, one column), all atomically; or it changes nothing
    and returns no row, and the portable action decides (a key seen before, a refusal). A
    unique violation means a request racing this one claimed the key: nothing of it is kept."""

    statement: sa.TextClause
    params: dict[str, Any]
    status: int  # the answer's status when it acts

    def answer(self, stored: str) -> Answer:
        return Answer(self.status, json.loads(stored), "application/json")


@dataclass(frozen=True)
class BulkOp:
    """One item of a bulk request as a service hands it to :meth:`IdempotencyStore.bulk`: the
    single route's operation (``req``, ``action``, and its ``quick`` statement where it has
    one), or the ``refusal`` it earns before any (an item its single route's model refuses:
    answered, never stored, as that route's 422)."""

    key: str
    path: str  # the single route's concrete path (a problem's instance)
    req: IdempotentRequest | None = None
    action: Callable[[Session], Outcome] | None = None
    refusal: Problem | None = None
    quick: Quick | None = None


class IdempotencyStore:
    """Records each key's answer in the business transaction and gives it back on a replay.

    Its decisions (act, replay, refuse a reused key, free an expired one) read the time from
    the ``clock`` it is given, never the wall clock, and yield an :class:`Answer`: rendering it
    as HTTP is :meth:`run`'s, the thin adapter the routes call."""

    def __init__(
        self, table: sa.Table, retention: dt.timedelta, on_replay: Callable[[str], None], clock: Clock
    ) -> None:
        self.table = table
        self.retention = retention
        self._on_replay = on_replay
        self._clock = clock
        self._compiled: dict[int, sa.engine.Compiled] = {}

    def run(
        self,
        session: Session,
        req: IdempotentRequest,
        action: Callable[[Session], Outcome],
        redact: Callable[[Any], Any] | None = None,
        quick: Quick | None = None,
    ) -> JSONResponse:
        """Act once for ``req`` and answer as HTTP (see :meth:`once`); a reused key is a 422
        ``idempotency-key-reused``, a key still in progress a 409 to retry after a second.
        ``quick``, on PostgreSQL, is tried first: one statement, one round trip."""
        answer = self._quickly(session, quick) if quick is not None else None
        if answer is not None:
            return self.response(answer)
        try:
            answer = self.once(session, req, action, redact)
        except (KeyReused, KeyInProgress) as exc:
            raise key_problem(exc) from exc
        return self.response(answer)

    @staticmethod
    def response(answer: Answer) -> JSONResponse:
        """An answer as HTTP: a replay says so in ``Idempotent-Replayed``."""
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        return JSONResponse(answer.body, answer.status, headers=headers, media_type=answer.media_type)

    def once(
        self,
        session: Session,
        req: IdempotentRequest,
        action: Callable[[Session], Outcome],
        redact: Callable[[Any], Any] | None = None,
    ) -> Answer:
        """``action``'s answer, run inside the transaction that records the key, or the answer
        stored for the key (``replayed``). ``redact`` makes the stored copy of a success (a
        secret shown once is not kept). Raises :class:`KeyReused` or :class:`KeyInProgress`."""
        now = self._clock()
        with session.begin():
            if self._claim(session, req, now):
                return self._keep(session, req, self._act(session, req, action), redact)
            row = self._row(session, req)
        return self._replay(req, row)

    def item(
        self,
        session: Session,
        req: IdempotentRequest,
        action: Callable[[Session], Outcome],
        redact: Callable[[Any], Any] | None = None,
    ) -> Answer:
        """:meth:`once` for one item of a bulk request, inside the caller's open transaction
        (one for the whole batch: its commit is paid once). The item's key, change and answer
        live in a savepoint of their own, so an unexpected failure (which propagates) takes
        back this item alone and the others still commit. Raises as :meth:`once`."""
        now = self._clock()
        with session.begin_nested():
            if self._claim(session, req, now):
                return self._keep(session, req, self._act(session, req, action), redact)
            row = self._row(session, req)
        return self._replay(req, row)

    def _quickly(self, session: Session, quick: Quick) -> Answer | None:
        """A single request's :class:`Quick` statement, in autocommit: atomic by itself, so
        without the round trips of BEGIN and COMMIT. None: the portable way decides."""
        if session.get_bind().dialect.name != "postgresql":
            return None
        try:
            with session.begin():
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                stored = session.execute(quick.statement, quick.params).scalar_one_or_none()
        except sa.exc.IntegrityError:  # a request racing this one claimed the key
            return None
        return None if stored is None else quick.answer(stored)

    def bulk(self, session: Session, ops: Sequence[BulkOp], order: Sequence[int] | None = None) -> BulkAnswer:
        """Every item of a bulk request answered as its single route would answer it, in one
        transaction: one commit for the batch.

        On PostgreSQL the items' :class:`Quick` statements go first, all in one pipeline (sent
        together, answered together: about one round trip for the batch); the items none of
        them acted for then take the portable way in order, each in a savepoint
        (:meth:`item`: a refusal is thus decided after the batch's quick items, and says what
        it saw then), so an item's failure is that item's 500 and takes nothing of the
        others. A quick statement that fails (a key claimed by a racing request, a deadlock)
        aborts the transaction: then nothing of the batch was kept, and it is done again with
        each statement in a savepoint of its own.

        ``order`` (the items' indexes) is the order they act in, where it is not the order
        sent: by the rows they lock, so that concurrent batches take their locks in one order
        and never deadlock. The answers are in the order sent."""
        order = list(order) if order is not None else list(range(len(ops)))
        answers: dict[int, ItemAnswer] = {}
        try:
            with session.begin():
                quick = self._pipelined(session, ops, order)
                for n in order:
                    answers[n] = self._bulk_item(session, ops[n], quick.get(n))
        except (sa.exc.DBAPIError, psycopg.Error):
            log.info("a bulk statement failed; the batch is done again item by item", exc_info=True)
            with session.begin():
                for n in order:
                    answers[n] = self._bulk_item(session, ops[n], self._careful(session, ops[n]))
        return BulkAnswer(items=[answers[n] for n in range(len(ops))])

    def _pipelined(self, session: Session, ops: Sequence[BulkOp], order: list[int]) -> dict[int, Answer]:
        """The answers of the quick statements that acted, by item: all sent in one pipeline."""
        todo = [(n, q) for n in order if (q := ops[n].quick) is not None and ops[n].refusal is None]
        if not todo or session.get_bind().dialect.name != "postgresql":
            return {}
        connection = session.connection()
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        sent = []
        with driver.pipeline():
            for n, quick in todo:
                compiled = self._compiled.get(id(quick.statement))
                if compiled is None:
                    compiled = self._compiled[id(quick.statement)] = quick.statement.compile(
                        dialect=connection.dialect
                    )
                cursor = driver.cursor()
                cursor.execute(compiled.string, compiled.construct_params(quick.params))
                sent.append((n, quick, cursor))
        answers = {}
        for n, quick, cursor in sent:
            row = cursor.fetchone()
            if row is not None:
                answers[n] = quick.answer(row[0])
        return answers

    @staticmethod
    def _careful(session: Session, op: BulkOp) -> Answer | None:
        """``op``'s quick statement in a savepoint of its own (see :meth:`bulk`)."""
        if op.quick is None or op.refusal is not None or session.get_bind().dialect.name != "postgresql":
            return None
        try:
            with session.begin_nested():
                stored = session.execute(op.quick.statement, op.quick.params).scalar_one_or_none()
        except sa.exc.DBAPIError:  # the key claimed by a racing request, a deadlock: nothing kept
            return None
        return None if stored is None else op.quick.answer(stored)

    def _bulk_item(self, session: Session, op: BulkOp, answer: Answer | None) -> ItemAnswer:
        if op.refusal is not None or op.req is None or op.action is None:
            refusal = op.refusal or Problem("an item with nothing to do")
            return ItemAnswer(key=op.key, status=refusal.status, body=refusal.body(op.path))
        try:
            if answer is None:
                answer = self.item(session, op.req, op.action)
        except (KeyReused, KeyInProgress) as exc:
            refusal = key_problem(exc)
            return ItemAnswer(key=op.key, status=refusal.status, body=refusal.body(op.path))
        except Exception as exc:  # this item's unknown outcome; its savepoint took it back
            log.exception("bulk item %s failed", op.req.route)
            failure = exc if isinstance(exc, Problem) else Problem("the operation failed; retry it")
            return ItemAnswer(key=op.key, status=failure.status, body=failure.body(op.path))
        return ItemAnswer(key=op.key, status=answer.status, replayed=answer.replayed, body=answer.body)

    def claim_row(self, req: IdempotentRequest) -> dict[str, Any]:
        """The columns that claim ``req``'s key now (the answer's aside): for a use case that
        claims its key and stores its answer in the very statement that acts (one round trip),
        where the key is new."""
        now = self._clock()
        return {
            "caller": req.caller,
            "key": req.key,
            "fingerprint": req.fingerprint,
            "route": req.route,
            "created_at": now,
            "expires_at": now + self.retention,
        }

    def _keep(
        self, session: Session, req: IdempotentRequest, answer: Answer, redact: Callable[[Any], Any] | None
    ) -> Answer:
        stored = redact(answer.body) if redact and answer.status < 300 else answer.body
        session.execute(
            self.table.update()
            .where(self.table.c.caller == req.caller, self.table.c.key == req.key)
            .values(
                response_status=answer.status,
                response_body=json.dumps(stored),
                response_media_type=answer.media_type,
            )
        )
        return answer

    def _row(self, session: Session, req: IdempotentRequest) -> sa.Row[Any]:
        return session.execute(
            sa.select(self.table).where(self.table.c.caller == req.caller, self.table.c.key == req.key)
        ).one()

    def _replay(self, req: IdempotentRequest, row: sa.Row[Any]) -> Answer:
        if row.fingerprint != req.fingerprint:
            raise KeyReused(req.key, row.route)
        if row.response_status is None:
            raise KeyInProgress(req.key)
        self._on_replay(req.template or req.route)
        return Answer(
            row.response_status, json.loads(row.response_body), row.response_media_type, replayed=True
        )

    @staticmethod
    def _act(session: Session, req: IdempotentRequest, action: Callable[[Session], Outcome]) -> Answer:
        """Run ``action`` in a savepoint: a refusal (a 4xx :class:`Problem`, raised or returned)
        is an answer to keep, its own changes rolled back when raised; anything else propagates
        and rolls back the key with the rest."""
        try:
            with session.begin_nested():
                status, body = action(session)
        except Problem as problem:
            if problem.status >= 500:
                raise
            status, body = problem.status, problem
        if isinstance(body, Problem):
            return Answer(body.status, body.body(req.route.split(" ", 1)[1]), PROBLEM_JSON)
        # A model straight to JSON-able data, as jsonable_encoder makes it (by alias), without
        # that function's walk over the result afterwards (a lease of 64 tasks: ~5,000 values).
        # The walk also dropped keys starting "_sa" (SQLAlchemy's state) at any depth: a user's
        # params or result holding such a key is now answered whole, as it was stored.
        if isinstance(body, BaseModel):
            return Answer(status, body.model_dump(mode="json", by_alias=True), "application/json")
        return Answer(status, jsonable_encoder(body), "application/json")

    def _claim(self, session: Session, req: IdempotentRequest, now: dt.datetime) -> bool:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        values = {
            "caller": req.caller,
            "key": req.key,
            "fingerprint": req.fingerprint,
            "route": req.route,
            "created_at": now,
            "expires_at": now + self.retention,
        }
        stmt = insert(self.table).values(**values).on_conflict_do_nothing().returning(self.table.c.key)
        if session.execute(stmt).first() is not None:
            return True
        # A key past its retention but not yet swept is free to use again.
        expired = session.execute(
            self.table.delete().where(
                self.table.c.caller == req.caller, self.table.c.key == req.key, self.table.c.expires_at <= now
            )
        )
        if expired.rowcount:  # type: ignore[attr-defined]
            session.execute(self.table.insert().values(**values))
            return True
        return False

    def sweep(self, session: Session) -> int:
        """Forget the keys past their retention."""
        with session.begin():
            result = session.execute(self.table.delete().where(self.table.c.expires_at <= self._clock()))
        return int(result.rowcount)  # type: ignore[attr-defined]
