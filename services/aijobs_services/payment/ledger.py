"""Payment's use cases and queries over one SQLAlchemy session (the caller owns the transaction).

The rules are :mod:`aijobs_services.payment.domain`'s; this module reads the rows they judge,
under a row lock where money moves, and writes what they decide: the account row caches both
balances, and every movement is a balanced transaction of immutable ledger entries. CHECK
constraints make a negative balance impossible even for a bug. Refusals are the domain's
:class:`~aijobs_services.payment.domain.PaymentError` exceptions, raised before anything
is written; the one refusal that writes (a capture that finds its hold expired returns the
credits) is returned instead, for the caller to commit with its answer.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aijobs.api.payment import LedgerCheck
from aijobs_services.kit.db import aware, utcnow
from aijobs_services.kit.idempotency import Quick
from aijobs_services.payment import domain
from aijobs_services.payment.domain import HoldState
from aijobs_services.payment.models import Account, Hold, LedgerEntry

__all__ = [
    "account",
    "account_entries",
    "accounts",
    "capture",
    "check",
    "expire_due",
    "extend",
    "hold",
    "job_charges",
    "open_account",
    "owners",
    "place_hold",
    "quick_capture",
    "quick_hold",
    "release",
    "top_up",
]


def _txn(
    session: Session, kind: domain.Movement, account_id: str, amount: int, on: Hold | None = None
) -> str:
    txn_id = f"txn-{uuid.uuid4().hex}"
    now = utcnow()
    session.add_all(
        LedgerEntry(
            txn_id=txn_id,
            kind=kind,
            book=book,
            amount=signed,
            created_at=now,
            hold_id=on.id if on else None,
            job_id=on.job_id if on else None,
        )
        for book, signed in domain.legs(kind, account_id, amount)
    )
    return txn_id


def _balance(row: Account) -> domain.Balance:
    return domain.Balance(row.available, row.held)


def _keep(row: Account, balance: domain.Balance) -> None:
    row.available, row.held = balance.available, balance.held


def _life(row: Hold) -> domain.HoldLife:
    return domain.HoldLife(
        row.id, HoldState(row.state), aware(row.expires_at), aware(row.created_at), row.amount
    )


# ------------------------------------------------------------------------------------- reads
def account(session: Session, account_id: str, *, lock: bool = False) -> Account:
    stmt = sa.select(Account).where(Account.id == account_id)
    row = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise domain.UnknownAccount(account_id)
    return row


def accounts(session: Session) -> list[Account]:
    return list(session.scalars(sa.select(Account).order_by(Account.id)))


def hold(session: Session, hold_id: str, *, lock: bool = False) -> Hold:
    stmt = sa.select(Hold).where(Hold.id == hold_id)
    row = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise domain.UnknownHold(hold_id)
    return row


def owners(session: Session, hold_ids: list[str]) -> dict[str, str]:
    """The account of each of these holds (those that exist), in one query."""
    rows = session.execute(sa.select(Hold.id, Hold.account_id).where(Hold.id.in_(hold_ids)))
    return {hold_id: account_id for hold_id, account_id in rows}


def job_charges(session: Session, job_id: str) -> tuple[list[Hold], list[LedgerEntry]]:
    """A job's holds, oldest first, and the ledger entries that moved its credits."""
    holds = session.scalars(sa.select(Hold).where(Hold.job_id == job_id).order_by(Hold.created_at))
    entries = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
    )
    return list(holds), list(entries)


def holds_page(session: Session, state: str | None, limit: int, after: str | None) -> list[Hold]:
    """Holds in id order (``state``'s only, when given), ``limit`` of them with ids past ``after``."""
    stmt = sa.select(Hold)
    if state is not None:
        stmt = stmt.where(Hold.state == state)
    if after is not None:
        stmt = stmt.where(Hold.id > after)
    return list(session.scalars(stmt.order_by(Hold.id).limit(limit)))


def account_entries(
    session: Session, account_id: str, limit: int, before: int | None = None
) -> list[LedgerEntry]:
    """An account's ledger entries, newest first, ``limit`` of them older than id ``before``."""
    account(session, account_id)  # an unknown account is refused, not shown as empty
    stmt = sa.select(LedgerEntry).where(
        LedgerEntry.book.in_([f"{account_id}:available", f"{account_id}:held"])
    )
    if before is not None:
        stmt = stmt.where(LedgerEntry.id < before)
    return list(session.scalars(stmt.order_by(LedgerEntry.id.desc()).limit(limit)))


# --------------------------------------------------------------------------------- movements
def open_account(session: Session, account_id: str) -> Account:
    if session.get(Account, account_id) is not None:
        raise domain.AccountExists(account_id)
    row = Account(id=account_id, available=0, held=0, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def top_up(session: Session, account_id: str, amount: int) -> tuple[Account, str]:
    row = account(session, account_id, lock=True)
    _keep(row, domain.top_up(_balance(row), amount))
    txn = _txn(session, "top-up", account_id, amount)
    session.flush()
    return row, txn


def place_hold(
    session: Session, account_id: str, job_id: str, amount: int, expires_at: dt.datetime | None = None
) -> Hold:
    now = utcnow()
    expires = domain.hold_expiry(expires_at, now)
    row = account(session, account_id, lock=True)
    _keep(row, domain.reserve(account_id, _balance(row), amount))
    placed = _new_hold(account_id, job_id, amount, expires, now)
    session.add(placed)
    session.flush()
    _txn(session, "hold", account_id, amount, placed)
    return placed


def _settle(session: Session, row: Hold, to: HoldState, captured: int = 0) -> None:
    owner = account(session, row.account_id, lock=True)
    _keep(owner, domain.settle(_balance(owner), row.amount, to, captured))
    row.state, row.settled_at, row.captured_amount = to.value, utcnow(), captured
    for kind, amount in domain.settlement(row.amount, to, captured):
        _txn(session, kind, row.account_id, amount, row)
    session.flush()


def capture(session: Session, hold_id: str, amount: int | None = None) -> Hold | domain.HoldExpired:
    """Charge the hold, all of it or ``amount`` with the rest released, in this transaction
    (see :func:`domain.capture`).

    An active hold past its expiry is expired here and now (the credits go back) and the
    refusal is returned, not raised, so that the caller commits the expiry with the answer.
    """
    row = hold(session, hold_id, lock=True)
    move = domain.capture(_life(row), utcnow(), amount)
    if move.to is not None:
        _settle(session, row, move.to, move.captured)
    return row if move.refusal is None else move.refusal


def release(session: Session, hold_id: str) -> Hold:
    row = hold(session, hold_id, lock=True)
    move = domain.release(_life(row))
    if move.to is not None:
        _settle(session, row, move.to)
    return row


def extend(session: Session, hold_id: str, expires_at: dt.datetime) -> Hold:
    row = hold(session, hold_id, lock=True)
    row.expires_at = domain.extend(_life(row), expires_at, utcnow())
    session.flush()
    return row


def expire_due(session: Session, limit: int = 500) -> int:
    """Expire active holds past their expiry (the periodic sweep). Returns how many."""
    now = utcnow()
    stmt = (
        sa.select(Hold)
        .where(Hold.state == HoldState.ACTIVE.value, Hold.expires_at <= now)
        .limit(limit)
        .with_for_update()
    )
    rows = [row for row in session.scalars(stmt) if domain.due(_life(row), now)]
    for row in rows:
        _settle(session, row, HoldState.EXPIRED)
    return len(rows)


# ------------------------------------------------------------------------------------- proof
def check(session: Session) -> LedgerCheck:
    """Prove the books: every transaction sums to zero, every cached balance equals the sum of
    its book's entries, and every account's ``held`` equals its active holds."""
    problems = []
    unbalanced = session.execute(
        sa.select(LedgerEntry.txn_id, sa.func.sum(LedgerEntry.amount))
        .group_by(LedgerEntry.txn_id)
        .having(sa.func.sum(LedgerEntry.amount) != 0)
    ).all()
    problems += [f"transaction {txn} sums to {total}, not 0" for txn, total in unbalanced]
    book_sums = sa.select(LedgerEntry.book, sa.func.sum(LedgerEntry.amount)).group_by(LedgerEntry.book)
    books = {book: total for book, total in session.execute(book_sums)}
    rows = accounts(session)
    for row in rows:
        for book, cached in ((f"{row.id}:available", row.available), (f"{row.id}:held", row.held)):
            derived = int(books.get(book, 0) or 0)
            if derived != cached:
                problems.append(f"{book}: cached {cached}, ledger says {derived}")
    active_sums = (
        sa.select(Hold.account_id, sa.func.sum(Hold.amount))
        .where(Hold.state == HoldState.ACTIVE.value)
        .group_by(Hold.account_id)
    )
    active = {account_id: total for account_id, total in session.execute(active_sums)}
    for row in rows:
        if int(active.get(row.id, 0) or 0) != row.held:
            problems.append(f"{row.id}: held {row.held}, active holds total {active.get(row.id, 0)}")
    transactions = session.scalar(sa.select(sa.func.count(sa.distinct(LedgerEntry.txn_id)))) or 0
    return LedgerCheck(
        consistent=not problems, accounts=len(rows), transactions=int(transactions), problems=problems
    )


# ------------------------------------------------------------------- one statement (PostgreSQL)
# The hot paths as one statement each, which claims the Idempotency-Key, moves the credits,
# writes the hold and its ledger legs and stores the answer: one round trip, atomic by itself.
# Each one acts only where the rules above would let the portable path act on a key seen for
# the first time (the WHERE clauses say :func:`domain.reserve` and :func:`domain.capture` for
# that case); anything else (a key seen before, a refusal, an expiry) changes nothing and
# returns no row, and the caller goes the portable way, which decides it. Two requests racing
# with one new key both pass the key's guard, and the second's INSERT of the key fails the
# whole statement (a unique violation): nothing of it is kept and the portable way replays.

_QUICK_HOLD = sa.text("""
WITH moved AS (
    UPDATE accounts SET available = available - :amount, held = held + :amount
    WHERE id = :account AND available >= :amount
      AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = :caller AND key = :key)
    RETURNING id
), placed AS (
    INSERT INTO holds (id, account_id, job_id, amount, state, expires_at, created_at, captured_amount)
    SELECT :hold_id, id, :job_id, :amount, 'active', :expires_at, :now, 0 FROM moved
    RETURNING id
), legs AS (
    INSERT INTO ledger_entries (txn_id, kind, book, amount, hold_id, job_id, created_at)
    SELECT :txn, 'hold', l.book, l.amount, placed.id, :job_id, :now
    FROM placed, (VALUES (CAST(:source AS TEXT), CAST(:debit AS BIGINT)),
                         (CAST(:sink AS TEXT), CAST(:credit AS BIGINT))) AS l (book, amount)
)
INSERT INTO idempotency_keys (caller, key, fingerprint, route, response_status, response_body,
                              response_media_type, created_at, expires_at)
SELECT :caller, :key, :fingerprint, :route, :response_status, :response_body,
       :response_media_type, :created_at, :key_expires_at
FROM placed
RETURNING response_body
""")


# The answer is built here, as :data:`aijobs.api.fields.Instant` writes a time: Python's isoformat
# in UTC, the microseconds only when there are some.
_QUICK_CAPTURE = sa.text("""
WITH settled AS (
    UPDATE holds SET state = 'captured', settled_at = :now,
                     captured_amount = COALESCE(CAST(:charge AS BIGINT), amount)
    WHERE id = :hold_id AND state = 'active' AND expires_at > :now
      AND COALESCE(CAST(:charge AS BIGINT), amount) BETWEEN 1 AND amount
      AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = :caller AND key = :key)
    RETURNING id, account_id, job_id, amount, expires_at, created_at, captured_amount
), moved AS (
    UPDATE accounts SET held = accounts.held - settled.amount,
                        available = accounts.available + settled.amount - settled.captured_amount
    FROM settled WHERE accounts.id = settled.account_id
), legs AS (
    INSERT INTO ledger_entries (txn_id, kind, book, amount, hold_id, job_id, created_at)
    SELECT l.txn, l.kind, l.book, l.amount, settled.id, settled.job_id, :now
    FROM settled CROSS JOIN LATERAL (VALUES
        (CAST(:capture_txn AS TEXT), 'capture', settled.account_id || '\\:held', -settled.captured_amount),
        (CAST(:capture_txn AS TEXT), 'capture', CAST(:revenue AS TEXT), settled.captured_amount),
        (CAST(:release_txn AS TEXT), 'release', settled.account_id || '\\:held',
         settled.captured_amount - settled.amount),
        (CAST(:release_txn AS TEXT), 'release', settled.account_id || '\\:available',
         settled.amount - settled.captured_amount)
    ) AS l (txn, kind, book, amount)
    WHERE l.amount <> 0
)
INSERT INTO idempotency_keys (caller, key, fingerprint, route, response_status, response_body,
                              response_media_type, created_at, expires_at)
SELECT :caller, :key, :fingerprint, :route, 200,
       json_build_object(
           'id', settled.id, 'account', settled.account_id, 'jobId', settled.job_id,
           'amount', settled.amount, 'state', 'captured',
           'expiresAt', to_char((settled.expires_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS')
               || CASE WHEN extract(microseconds FROM settled.expires_at)::bigint % 1000000 = 0
                  THEN '' ELSE to_char((settled.expires_at AT TIME ZONE 'UTC'), '.US') END || '+00:00',
           'createdAt', to_char((settled.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS')
               || CASE WHEN extract(microseconds FROM settled.created_at)::bigint % 1000000 = 0
                  THEN '' ELSE to_char((settled.created_at AT TIME ZONE 'UTC'), '.US') END || '+00:00',
           'settledAt', CAST(:settled_iso AS TEXT), 'capturedAmount', settled.captured_amount,
           'releasedAmount', settled.amount - settled.captured_amount
       )::text,
       'application/json', :created_at, :key_expires_at
FROM settled
RETURNING response_body
""")


def quick_hold(
    key: dict[str, Any],
    account_id: str,
    job_id: str,
    amount: int,
    expires_at: dt.datetime | None,
    answer: Callable[[Hold], dict[str, Any]],
) -> Quick | None:
    """:func:`place_hold` as one statement for a new key (see above). ``key`` claims it
    (:meth:`IdempotencyStore.claim_row`); ``answer`` renders the hold placed, which the
    statement stores. None: a bad expiry, left to the portable way to refuse."""
    now = utcnow()
    try:
        expires = domain.hold_expiry(expires_at, now)
    except domain.BadExpiry:
        return None
    placed = _new_hold(account_id, job_id, amount, expires, now)
    (source, debit), (sink, credit) = domain.legs("hold", account_id, amount)
    return Quick(
        _QUICK_HOLD,
        {
            **_key_params(key),
            "response_status": 201,
            "response_body": json.dumps(answer(placed)),
            "response_media_type": "application/json",
            "account": account_id,
            "amount": amount,
            "hold_id": placed.id,
            "job_id": job_id,
            "expires_at": expires,
            "now": now,
            "txn": f"txn-{uuid.uuid4().hex}",
            "source": source,
            "debit": debit,
            "sink": sink,
            "credit": credit,
        },
        201,
    )


def quick_capture(key: dict[str, Any], hold_id: str, amount: int | None) -> Quick:
    """:func:`capture` as one statement for a new key and an active, unexpired hold that holds
    ``amount`` (the whole hold when None); see above."""
    now = utcnow()
    return Quick(
        _QUICK_CAPTURE,
        {
            **_key_params(key),
            "hold_id": hold_id,
            "charge": amount,
            "now": now,
            "settled_iso": now.isoformat(),
            "capture_txn": f"txn-{uuid.uuid4().hex}",
            "release_txn": f"txn-{uuid.uuid4().hex}",
            "revenue": domain.REVENUE,
        },
        200,
    )


def _key_params(key: dict[str, Any]) -> dict[str, Any]:
    return {
        "caller": key["caller"],
        "key": key["key"],
        "fingerprint": key["fingerprint"],
        "route": key["route"],
        "created_at": key["created_at"],
        "key_expires_at": key["expires_at"],
    }


def _new_hold(account_id: str, job_id: str, amount: int, expires: dt.datetime, now: dt.datetime) -> Hold:
    """A hold to place now, with a fresh id (for :func:`place_hold` and its one statement)."""
    return Hold(
        id=f"hold-{uuid.uuid4().hex}",
        account_id=account_id,
        job_id=job_id,
        amount=amount,
        state=HoldState.ACTIVE.value,
        expires_at=expires,
        created_at=now,
        captured_amount=0,
    )
