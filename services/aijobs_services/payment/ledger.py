"""Payment's use cases over one SQLAlchemy session (the caller owns the transaction).

Money moves only as balanced ledger transactions between books: ``<account>:available``,
``<account>:held``, ``system:funding`` (where top-ups come from) and ``system:revenue`` (where
captures go). A hold moves credits available -> held; capture moves held -> revenue; release
and expiry move held -> available. The account row caches both balances under a row lock, and
CHECK constraints make a negative balance impossible even for a bug.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aijobs.api.rules import MAX_HOLD
from aijobs_services.kit.db import aware, utcnow
from aijobs_services.kit.problems import Conflict, NotFound, Problem, Unprocessable
from aijobs_services.payment.models import Account, Hold, LedgerEntry

FUNDING = "system:funding"
REVENUE = "system:revenue"


class InsufficientCredits(Problem):
    status, slug, title = 402, "insufficient-credits", "Not enough credits"


class HoldSettled(Conflict):
    slug, title = "hold-settled", "The hold is already settled"


class HoldExpired(Conflict):
    slug, title = "hold-expired", "The hold expired"


def _txn(session: Session, kind: str, legs: list[tuple[str, int]], hold: Hold | None = None) -> str:
    assert sum(amount for _, amount in legs) == 0, legs
    txn_id = f"txn-{uuid.uuid4().hex}"
    now = utcnow()
    session.add_all(
        LedgerEntry(
            txn_id=txn_id,
            kind=kind,
            book=book,
            amount=amount,
            created_at=now,
            hold_id=hold.id if hold else None,
            job_id=hold.job_id if hold else None,
        )
        for book, amount in legs
    )
    return txn_id


def _account(session: Session, account_id: str, *, lock: bool = True) -> Account:
    stmt = sa.select(Account).where(Account.id == account_id)
    account = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if account is None:
        raise NotFound(f"no account {account_id!r}", slug="unknown-account", title="Unknown account")
    return account


def _hold(session: Session, hold_id: str) -> Hold:
    hold = session.scalars(sa.select(Hold).where(Hold.id == hold_id).with_for_update()).one_or_none()
    if hold is None:
        raise NotFound(f"no hold {hold_id!r}", slug="unknown-hold", title="Unknown hold")
    return hold


def open_account(session: Session, account_id: str) -> Account:
    if session.get(Account, account_id) is not None:
        raise Conflict(
            f"account {account_id!r} already exists", slug="account-exists", title="Account exists"
        )
    account = Account(id=account_id, available=0, held=0, created_at=utcnow())
    session.add(account)
    session.flush()
    return account


def top_up(session: Session, account_id: str, amount: int) -> tuple[Account, str]:
    account = _account(session, account_id)
    account.available += amount
    txn = _txn(session, "top-up", [(FUNDING, -amount), (f"{account_id}:available", amount)])
    session.flush()
    return account, txn


def place_hold(session: Session, account_id: str, job_id: str, amount: int, expires_at: dt.datetime) -> Hold:
    now = utcnow()
    if not now < expires_at <= now + MAX_HOLD:
        raise Unprocessable(
            f"expiresAt must be in the future and within {MAX_HOLD.days} days",
            slug="bad-expiry",
            title="Invalid hold expiry",
        )
    account = _account(session, account_id)
    if account.available < amount:
        raise InsufficientCredits(
            f"account {account_id!r} has {account.available} credits available; the hold needs {amount}",
            available=account.available,
            requested=amount,
        )
    account.available -= amount
    account.held += amount
    hold = Hold(
        id=f"hold-{uuid.uuid4().hex}",
        account_id=account_id,
        job_id=job_id,
        amount=amount,
        state="active",
        expires_at=expires_at,
        created_at=now,
    )
    session.add(hold)
    session.flush()
    _txn(session, "hold", [(f"{account_id}:available", -amount), (f"{account_id}:held", amount)], hold)
    return hold


def _unhold(session: Session, hold: Hold, state: str) -> None:
    account = _account(session, hold.account_id)
    account.held -= hold.amount
    if state == "captured":
        legs = [(f"{hold.account_id}:held", -hold.amount), (REVENUE, hold.amount)]
    else:
        account.available += hold.amount
        legs = [(f"{hold.account_id}:held", -hold.amount), (f"{hold.account_id}:available", hold.amount)]
    hold.state = state
    hold.settled_at = utcnow()
    _txn(session, {"captured": "capture", "released": "release", "expired": "expire"}[state], legs, hold)
    session.flush()


def capture(session: Session, hold_id: str) -> Hold | Problem:
    """Charge the hold. Capturing twice is a no-op; a released or expired hold can't be captured.

    An active hold past its expiry is expired here and now (the credits go back) and the
    refusal is returned, not raised, so that expiry commits with the answer.
    """
    hold = _hold(session, hold_id)
    if hold.state == "captured":
        return hold
    if hold.state != "active":
        raise HoldSettled(f"hold {hold_id} was {hold.state}; it can't be captured", state=hold.state)
    if aware(hold.expires_at) <= utcnow():
        _unhold(session, hold, "expired")
        return HoldExpired(
            f"hold {hold_id} expired at {aware(hold.expires_at).isoformat()}; credits returned"
        )
    _unhold(session, hold, "captured")
    return hold


def release(session: Session, hold_id: str) -> Hold:
    """Return the held credits. Releasing twice, or an expired hold, is a no-op."""
    hold = _hold(session, hold_id)
    if hold.state in ("released", "expired"):
        return hold
    if hold.state == "captured":
        raise HoldSettled(f"hold {hold_id} was captured; it can't be released", state=hold.state)
    _unhold(session, hold, "released")
    return hold


def extend(session: Session, hold_id: str, expires_at: dt.datetime) -> Hold:
    hold = _hold(session, hold_id)
    if hold.state != "active":
        raise HoldSettled(
            f"hold {hold_id} is {hold.state}; only an active hold can be extended", state=hold.state
        )
    now = utcnow()
    if aware(hold.expires_at) <= now:
        raise HoldExpired(f"hold {hold_id} already expired")
    if not now < expires_at <= aware(hold.created_at) + MAX_HOLD:
        raise Unprocessable(f"expiresAt must be in the future and within {MAX_HOLD.days} days of the hold")
    hold.expires_at = expires_at
    session.flush()
    return hold


def expire_due(session: Session, limit: int = 500) -> int:
    """Expire active holds past their expiry (the periodic sweep). Returns how many."""
    stmt = (
        sa.select(Hold)
        .where(Hold.state == "active", Hold.expires_at <= utcnow())
        .limit(limit)
        .with_for_update()
    )
    holds = list(session.scalars(stmt))
    for hold in holds:
        _unhold(session, hold, "expired")
    return len(holds)


@dataclass(frozen=True)
class LedgerCheck:
    consistent: bool
    accounts: int
    transactions: int
    problems: list[str]


def check(session: Session) -> LedgerCheck:
    """Prove the books: every transaction sums to zero, and every cached balance equals the sum
    of its book's entries."""
    problems = []
    unbalanced = session.execute(
        sa.select(LedgerEntry.txn_id, sa.func.sum(LedgerEntry.amount))
        .group_by(LedgerEntry.txn_id)
        .having(sa.func.sum(LedgerEntry.amount) != 0)
    ).all()
    problems += [f"transaction {txn} sums to {total}, not 0" for txn, total in unbalanced]
    book_sums = sa.select(LedgerEntry.book, sa.func.sum(LedgerEntry.amount)).group_by(LedgerEntry.book)
    books = {book: total for book, total in session.execute(book_sums)}
    accounts = list(session.scalars(sa.select(Account)))
    for account in accounts:
        for book, cached in (
            (f"{account.id}:available", account.available),
            (f"{account.id}:held", account.held),
        ):
            derived = int(books.get(book, 0) or 0)
            if derived != cached:
                problems.append(f"{book}: cached {cached}, ledger says {derived}")
    active_sums = (
        sa.select(Hold.account_id, sa.func.sum(Hold.amount))
        .where(Hold.state == "active")
        .group_by(Hold.account_id)
    )
    active = {account_id: total for account_id, total in session.execute(active_sums)}
    for account in accounts:
        if int(active.get(account.id, 0) or 0) != account.held:
            problems.append(
                f"{account.id}: held {account.held}, active holds total {active.get(account.id, 0)}"
            )
    transactions = session.scalar(sa.select(sa.func.count(sa.distinct(LedgerEntry.txn_id)))) or 0
    return LedgerCheck(not problems, len(accounts), int(transactions), problems)
