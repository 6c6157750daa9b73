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
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aijobs.api.payment import LedgerCheck
from aijobs_services.kit.db import aware, utcnow
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
    "place_hold",
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
    return domain.HoldLife(row.id, HoldState(row.state), aware(row.expires_at), aware(row.created_at))


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


def job_charges(session: Session, job_id: str) -> tuple[list[Hold], list[LedgerEntry]]:
    """A job's holds, oldest first, and the ledger entries that moved its credits."""
    holds = session.scalars(sa.select(Hold).where(Hold.job_id == job_id).order_by(Hold.created_at))
    entries = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
    )
    return list(holds), list(entries)


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
    placed = Hold(
        id=f"hold-{uuid.uuid4().hex}",
        account_id=account_id,
        job_id=job_id,
        amount=amount,
        state=HoldState.ACTIVE.value,
        expires_at=expires,
        created_at=now,
    )
    session.add(placed)
    session.flush()
    _txn(session, "hold", account_id, amount, placed)
    return placed


def _settle(session: Session, row: Hold, to: HoldState) -> None:
    owner = account(session, row.account_id, lock=True)
    _keep(owner, domain.settle(_balance(owner), row.amount, to))
    row.state, row.settled_at = to.value, utcnow()
    _txn(session, domain.movement(to), row.account_id, row.amount, row)
    session.flush()


def capture(session: Session, hold_id: str) -> Hold | domain.HoldExpired:
    """Charge the hold (see :func:`domain.capture`).

    An active hold past its expiry is expired here and now (the credits go back) and the
    refusal is returned, not raised, so that the caller commits the expiry with the answer.
    """
    row = hold(session, hold_id, lock=True)
    move = domain.capture(_life(row), utcnow())
    if move.to is not None:
        _settle(session, row, move.to)
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
