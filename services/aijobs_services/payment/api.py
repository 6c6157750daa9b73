"""Payment's HTTP API. Mutations take an Idempotency-Key; reads don't."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import Field, StrictInt
from sqlalchemy.orm import Session

from aijobs.api.rules import ACCOUNT_NAME
from aijobs_services.kit.admin_audit import record
from aijobs_services.kit.app import CamelModel, IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import aware, utcnow
from aijobs_services.kit.fields import MAX_ROW_ID, Timestamp
from aijobs_services.kit.idempotency import IdempotentRequestDep
from aijobs_services.kit.problems import NotFound, Problem
from aijobs_services.payment import ledger
from aijobs_services.payment.models import Account, AdminActions, Hold, LedgerEntry

ACCOUNT_ID = ACCOUNT_NAME
Admin = Annotated[Caller, Depends(allow("admin"))]
# The operator opens the account a CreditAccount object names (the cluster's RBAC decides who may
# create one); only an admin moves money into it.
Provisioner = Annotated[Caller, Depends(allow("admin", "operator"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api"))]


class AccountCreate(CamelModel):
    id: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_ID)


class TopUpCreate(CamelModel):
    amount: StrictInt = Field(gt=0, le=10**12)
    reason: str = Field(default="", max_length=500, description="Why (kept in the admin audit trail)")


class HoldCreate(CamelModel):
    account: str = Field(min_length=2, max_length=63, pattern=ACCOUNT_ID)
    job_id: str = Field(min_length=1, max_length=128)
    amount: StrictInt = Field(gt=0, le=10**9)
    expires_at: Timestamp | None = Field(default=None, description="Default: one hour from now")


class HoldExtend(CamelModel):
    expires_at: Timestamp


class AccountPublic(CamelModel):
    id: str
    available: int
    held: int
    balance: int


class HoldPublic(CamelModel):
    id: str
    account: str
    job_id: str
    amount: int
    state: str
    expires_at: dt.datetime
    created_at: dt.datetime
    settled_at: dt.datetime | None


def _account(a: Account) -> dict[str, Any]:
    return AccountPublic(
        id=a.id, available=a.available, held=a.held, balance=a.available + a.held
    ).model_dump(by_alias=True)


def _hold(h: Hold) -> dict[str, Any]:
    return HoldPublic(
        id=h.id,
        account=h.account_id,
        job_id=h.job_id,
        amount=h.amount,
        state=h.state,
        expires_at=aware(h.expires_at),
        created_at=aware(h.created_at),
        settled_at=aware(h.settled_at) if h.settled_at else None,
    ).model_dump(by_alias=True, mode="json")


def _hold_or_problem(result: Hold | Problem) -> tuple[int, Any]:
    return (result.status, result) if isinstance(result, Problem) else (200, _hold(result))


router = APIRouter(prefix="/v1", tags=["payment"])


@router.post("/accounts", status_code=201, summary="Open a credit account (admin)")
def open_account(
    body: AccountCreate,
    who: Provisioner,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        account = ledger.open_account(s, body.id)
        record(s, AdminActions, who.name, "account.open", body.id, key=idem.key)
        return 201, _account(account)

    return store.run(session, idem, act)


@router.get("/accounts", summary="Every account's balances")
def list_accounts(_: Reader, session: SessionDep) -> dict[str, Any]:
    import sqlalchemy as sa

    with session.begin():
        return {"items": [_account(a) for a in session.scalars(sa.select(Account).order_by(Account.id))]}


@router.get("/accounts/{account_id}", summary="Balances: available, held, and their sum")
def get_account(account_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        return _account(ledger._account(session, account_id, lock=False))


@router.post("/accounts/{account_id}/top-ups", status_code=201, summary="Add credits (admin)")
def top_up(
    account_id: str,
    body: TopUpCreate,
    who: Admin,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        account, txn = ledger.top_up(s, account_id, body.amount)
        record(
            s,
            AdminActions,
            who.name,
            "account.top-up",
            account_id,
            amount=body.amount,
            reason=body.reason,
            transaction=txn,
            key=idem.key,
        )
        return 201, {"transaction": txn, "account": _account(account)}

    return store.run(session, idem, act)


@router.post("/holds", status_code=201, summary="Reserve credits for a job (402 if not enough)")
def place_hold(
    body: HoldCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    expires = body.expires_at or utcnow() + dt.timedelta(hours=1)
    return store.run(
        session,
        idem,
        lambda s: (201, _hold(ledger.place_hold(s, body.account, body.job_id, body.amount, expires))),
    )


@router.get("/holds/{hold_id}", summary="One hold")
def get_hold(hold_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        hold = session.get(Hold, hold_id)
        if hold is None:
            raise NotFound(f"no hold {hold_id!r}", slug="unknown-hold", title="Unknown hold")
        return _hold(hold)


@router.post("/holds/{hold_id}/capture", summary="Charge a hold (idempotent; final)")
def capture(
    hold_id: str, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, lambda s: _hold_or_problem(ledger.capture(s, hold_id)))


@router.post("/holds/{hold_id}/release", summary="Return a hold's credits (idempotent; final)")
def release(
    hold_id: str, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, _hold(ledger.release(s, hold_id))))


@router.post("/holds/{hold_id}/extend", summary="Move an active hold's expiry")
def extend(
    hold_id: str,
    body: HoldExtend,
    _: Operator,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(session, idem, lambda s: (200, _hold(ledger.extend(s, hold_id, body.expires_at))))


@router.get("/jobs/{job_id}/charges", summary="A job's holds and ledger movements (for the auditor)")
def job_charges(job_id: str, _: Reader, session: SessionDep) -> dict[str, Any]:
    import sqlalchemy as sa

    with session.begin():
        holds = list(session.scalars(sa.select(Hold).where(Hold.job_id == job_id).order_by(Hold.created_at)))
        entries = list(
            session.scalars(
                sa.select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
            )
        )
        captured = sum(h.amount for h in holds if h.state == "captured")
        return {
            "jobId": job_id,
            "charged": captured,
            "holds": [_hold(h) for h in holds],
            "entries": [
                {
                    "transaction": e.txn_id,
                    "kind": e.kind,
                    "book": e.book,
                    "amount": e.amount,
                    "holdId": e.hold_id,
                    "at": aware(e.created_at).isoformat(),
                }
                for e in entries
            ],
        }


@router.get("/accounts/{account_id}/ledger", summary="An account's movements, newest first (paginated)")
def account_ledger(
    account_id: str,
    _: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ROW_ID, description="Only entries older than this id (a page's next)")
    ] = None,
) -> dict[str, Any]:
    import sqlalchemy as sa

    books = [f"{account_id}:available", f"{account_id}:held"]
    with session.begin():
        ledger._account(session, account_id, lock=False)  # 404 for an unknown account
        stmt = sa.select(LedgerEntry).where(LedgerEntry.book.in_(books))
        if before is not None:
            stmt = stmt.where(LedgerEntry.id < before)
        entries = list(session.scalars(stmt.order_by(LedgerEntry.id.desc()).limit(limit)))
        return {
            "account": account_id,
            "items": [
                {
                    "id": e.id,
                    "transaction": e.txn_id,
                    "kind": e.kind,
                    "book": e.book.split(":", 1)[1],
                    "amount": e.amount,
                    "holdId": e.hold_id,
                    "jobId": e.job_id,
                    "at": aware(e.created_at).isoformat(),
                }
                for e in entries
            ],
            "next": entries[-1].id if len(entries) == limit else None,
        }


@router.get("/ledger/check", summary="Prove the books balance and every balance matches its ledger")
def ledger_check(_: Reader, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        result = ledger.check(session)
    return {
        "consistent": result.consistent,
        "accounts": result.accounts,
        "transactions": result.transactions,
        "problems": result.problems,
    }
