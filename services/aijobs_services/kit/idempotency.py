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

Rows older than the retention are swept; a key is scoped to its caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aijobs_services.kit.callers import CallerDep
from aijobs_services.kit.problems import PROBLEM_JSON, BadRequest, Conflict, Problem, Unprocessable

__all__ = [
    "IdempotencyStore",
    "IdempotentRequest",
    "IdempotentRequestDep",
    "idempotency_table",
    "read_idempotent_request",
]

MAX_KEY_LENGTH = 200


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
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be printable and at most {MAX_KEY_LENGTH} characters",
            slug="idempotency-key-invalid",
            title="Invalid Idempotency-Key",
        )
    body = await request.body()
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    template = getattr(request.scope.get("route"), "path", request.url.path)
    return IdempotentRequest(
        caller,
        key,
        digest.hexdigest(),
        f"{request.method} {request.url.path}",
        f"{request.method} {template}",
    )


async def _idempotent_request(request: Request, caller: CallerDep) -> IdempotentRequest:
    return await read_idempotent_request(request, caller.name)


IdempotentRequestDep = Annotated[IdempotentRequest, Depends(_idempotent_request)]

# What a use case returns: (HTTP status, JSON-able body). The body may be a Problem: a refusal
# whose side effects (an expiry, say) must commit with it.
Outcome = tuple[int, Any]


class IdempotencyStore:
    def __init__(self, table: sa.Table, retention: dt.timedelta, on_replay: Callable[[str], None]) -> None:
        self.table = table
        self.retention = retention
        self._on_replay = on_replay

    def run(
        self,
        session: Session,
        req: IdempotentRequest,
        action: Callable[[Session], Outcome],
        redact: Callable[[Any], Any] | None = None,
    ) -> JSONResponse:
        """Act once for ``req``: ``action`` runs inside the transaction that records the key.

        ``redact`` makes the stored copy of the answer (a secret shown once is not kept)."""
        now = dt.datetime.now(dt.UTC)
        with session.begin():
            if self._claim(session, req, now):
                path = req.route.split(" ", 1)[1]
                try:
                    with session.begin_nested():
                        status, body = action(session)
                except Problem as problem:
                    if problem.status >= 500:
                        raise
                    status, body = problem.status, problem  # rolled back to the savepoint
                if isinstance(body, Problem):  # a refusal, stored like any answer
                    status, body, media_type = body.status, body.body(path), PROBLEM_JSON
                else:
                    body, media_type = jsonable_encoder(body), "application/json"
                session.execute(
                    self.table.update()
                    .where(self.table.c.caller == req.caller, self.table.c.key == req.key)
                    .values(
                        response_status=status,
                        response_body=json.dumps(redact(body) if redact and status < 300 else body),
                        response_media_type=media_type,
                    )
                )
                return JSONResponse(body, status, media_type=media_type)
            row = session.execute(
                sa.select(self.table).where(self.table.c.caller == req.caller, self.table.c.key == req.key)
            ).one()
        if row.fingerprint != req.fingerprint:
            raise Unprocessable(
                f"Idempotency-Key {req.key!r} was first used for a different request ({row.route}); "
                "use a new key for a new request",
                slug="idempotency-key-reused",
                title="Idempotency-Key reused with a different request",
            )
        if row.response_status is None:
            raise Conflict(
                f"a request with Idempotency-Key {req.key!r} is still in progress; retry shortly",
                slug="idempotency-key-in-progress",
                headers={"Retry-After": "1"},
            )
        self._on_replay(req.template or req.route)
        return JSONResponse(
            json.loads(row.response_body),
            row.response_status,
            headers={"Idempotent-Replayed": "true"},
            media_type=row.response_media_type,
        )

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
                self.table.c.caller == req.caller, self.table.c.key == req.key, self.table.c.expires_at < now
            )
        )
        if expired.rowcount:  # type: ignore[attr-defined]
            session.execute(self.table.insert().values(**values))
            return True
        return False

    def sweep(self, session: Session) -> int:
        with session.begin():
            result = session.execute(
                self.table.delete().where(self.table.c.expires_at < dt.datetime.now(dt.UTC))
            )
        return int(result.rowcount)  # type: ignore[attr-defined]
