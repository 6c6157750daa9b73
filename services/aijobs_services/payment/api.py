"""Payment's HTTP API: the wire models of :mod:`aijobs.api.payment` in and out, the ledger's use
cases in between, and each domain refusal answered as the problem the contract names for it.
Mutations take an Idempotency-Key; reads don't.

Holds and captures, the operator's hot path, also come in bulk (``POST /v1/bulk/holds``,
``POST /v1/bulk/captures``, :mod:`aijobs.api.bulk`): each item the single route's operation under
its own key, all in one transaction. On PostgreSQL each new hold or capture is first tried as
one statement that also records its key and answer (:func:`ledger.quick_hold`); whatever that
statement leaves (a replay, a refusal) goes the portable way, which SQLite takes always."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from aijobs.api.bulk import BulkAnswer, BulkRequest, item_body
from aijobs.api.payment import (
    PROBLEMS,
    Account,
    AccountCreate,
    AccountList,
    CaptureRequest,
    ChargeEntry,
    Charges,
    Hold,
    HoldCapture,
    HoldCreate,
    HoldExtend,
    HoldPage,
    HoldState,
    LedgerCheck,
    LedgerItem,
    LedgerPage,
    TopUp,
    TopUpCreate,
)
from aijobs_services.kit.admin_audit import record
from aijobs_services.kit.app import IdemStoreDep, SessionDep
from aijobs_services.kit.callers import Caller, allow
from aijobs_services.kit.db import aware
from aijobs_services.kit.fields import MAX_ROW_ID, NO_NUL, PathText
from aijobs_services.kit.idempotency import (
    BulkOp,
    IdempotencyStore,
    IdempotentRequest,
    IdempotentRequestDep,
    Quick,
    item_request,
)
from aijobs_services.kit.problems import Problem, documented, read_item
from aijobs_services.payment import domain, ledger, models

Admin = Annotated[Caller, Depends(allow("admin"))]
# The operator opens the account a CreditAccount object names (the cluster's RBAC decides who may
# create one); only an admin moves money into it.
Provisioner = Annotated[Caller, Depends(allow("admin", "operator"))]
Operator = Annotated[Caller, Depends(allow("operator", "admin"))]
Reader = Annotated[Caller, Depends(allow("operator", "admin", "main-api"))]


# ------------------------------------------------------------------------------ problems
def problem(error: domain.PaymentError) -> Problem:
    """The answer the contract names for a domain refusal."""
    kind = PROBLEMS[error.slug]
    answer = Problem(error.detail, status=kind.status, slug=kind.slug, title=kind.title)
    answer.extra = dict(error.members)  # the facts a client may act on (available, state, ...)
    return answer


@contextmanager
def refusals() -> Iterator[None]:
    """Raise a domain refusal as its problem (nothing was written: the rules refuse first)."""
    try:
        yield
    except domain.PaymentError as error:
        raise problem(error) from error


def answers(*slugs: str) -> dict[int | str, dict[str, Any]]:
    """A route's documented refusals, by the domain's slugs (the kit adds its own: credentials,
    validation, the Idempotency-Key)."""
    return documented(*((PROBLEMS[s].status, s, PROBLEMS[s].title) for s in slugs))


# ------------------------------------------------------------------------------ wire models
def account_of(row: models.Account) -> Account:
    return Account(id=row.id, available=row.available, held=row.held, balance=row.available + row.held)


def hold_of(row: models.Hold) -> Hold:
    return Hold(
        id=row.id,
        account=row.account_id,
        job_id=row.job_id,
        amount=row.amount,
        state=HoldState(row.state),
        expires_at=aware(row.expires_at),
        created_at=aware(row.created_at),
        settled_at=aware(row.settled_at) if row.settled_at else None,
        captured_amount=row.captured_amount,
        released_amount=domain.released(HoldState(row.state), row.amount, row.captured_amount),
    )


def _json(model: Account | Hold | TopUp) -> dict[str, Any]:
    """What the idempotency store keeps and answers: the model as it goes on the wire."""
    return model.model_dump(by_alias=True, mode="json")


router = APIRouter(prefix="/v1", tags=["payment"])


# -------------------------------------------------------------------------------- accounts
@router.post(
    "/accounts",
    status_code=201,
    summary="Open a credit account (admin)",
    response_model=Account,
    responses=answers("account-exists"),
)
def open_account(
    body: AccountCreate,
    who: Provisioner,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        with refusals():
            account = ledger.open_account(s, body.id)
        record(s, models.AdminActions, who.name, "account.open", body.id, key=idem.key)
        return 201, _json(account_of(account))

    return store.run(session, idem, act)


@router.get("/accounts", summary="Every account's balances", response_model=AccountList)
def list_accounts(_: Reader, session: SessionDep) -> AccountList:
    with session.begin():
        return AccountList(items=[account_of(a) for a in ledger.accounts(session)])


@router.get(
    "/accounts/{account_id}",
    summary="Balances: available, held, and their sum",
    response_model=Account,
    responses=answers("unknown-account"),
)
def get_account(account_id: PathText, _: Reader, session: SessionDep) -> Account:
    with refusals(), session.begin():
        return account_of(ledger.account(session, account_id))


@router.post(
    "/accounts/{account_id}/top-ups",
    status_code=201,
    summary="Add credits (admin)",
    response_model=TopUp,
    responses=answers("unknown-account"),
)
def top_up(
    account_id: PathText,
    body: TopUpCreate,
    who: Admin,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    def act(s: Session) -> tuple[int, Any]:
        with refusals():
            account, txn = ledger.top_up(s, account_id, body.amount)
        record(
            s,
            models.AdminActions,
            who.name,
            "account.top-up",
            account_id,
            amount=body.amount,
            reason=body.reason,
            transaction=txn,
            key=idem.key,
        )
        return 201, _json(TopUp(transaction=txn, account=account_of(account)))

    return store.run(session, idem, act)


@router.get(
    "/accounts/{account_id}/ledger",
    summary="An account's movements, newest first (paginated)",
    response_model=LedgerPage,
    responses=answers("unknown-account"),
)
def account_ledger(
    account_id: PathText,
    _: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ROW_ID, description="Only entries older than this id (a page's next)")
    ] = None,
) -> LedgerPage:
    with refusals(), session.begin():
        entries = ledger.account_entries(session, account_id, limit, before)
        return LedgerPage(
            account=account_id,
            items=[
                LedgerItem(
                    id=e.id,
                    transaction=e.txn_id,
                    kind=e.kind,
                    book=e.book.split(":", 1)[1],
                    amount=e.amount,
                    hold_id=e.hold_id,
                    job_id=e.job_id,
                    at=aware(e.created_at),
                )
                for e in entries
            ],
            next=entries[-1].id if len(entries) == limit else None,
        )


# ----------------------------------------------------------------------------------- holds
def _hold_action(body: HoldCreate) -> Callable[[Session], tuple[int, Any]]:
    def act(s: Session) -> tuple[int, Any]:
        with refusals():
            return 201, _json(
                hold_of(ledger.place_hold(s, body.account, body.job_id, body.amount, body.expires_at))
            )

    return act


def _quick_hold(store: IdempotencyStore, idem: IdempotentRequest, body: HoldCreate) -> Quick | None:
    return ledger.quick_hold(
        store.claim_row(idem),
        body.account,
        body.job_id,
        body.amount,
        body.expires_at,
        lambda row: _json(hold_of(row)),
    )


@router.post(
    "/holds",
    status_code=201,
    summary="Reserve credits for a job (402 if not enough)",
    response_model=Hold,
    responses=answers("unknown-account", "insufficient-credits", "bad-expiry"),
)
def place_hold(
    body: HoldCreate, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, _hold_action(body), quick=_quick_hold(store, idem, body))


@router.get("/holds", summary="Holds in id order, by state (paginated)", response_model=HoldPage)
def list_holds(
    _: Reader,
    session: SessionDep,
    state: Annotated[HoldState | None, Query(description="Only holds in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    after: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_NUL, description="Only holds with ids past this (a page's next)"),
    ] = None,
) -> HoldPage:
    with session.begin():
        holds = ledger.holds_page(session, None if state is None else state.value, limit, after)
        return HoldPage(items=[hold_of(h) for h in holds], next=holds[-1].id if len(holds) == limit else None)


@router.get("/holds/{hold_id}", summary="One hold", response_model=Hold, responses=answers("unknown-hold"))
def get_hold(hold_id: PathText, _: Reader, session: SessionDep) -> Hold:
    with refusals(), session.begin():
        return hold_of(ledger.hold(session, hold_id))


def _on_hold(
    action: Callable[[Session], models.Hold | domain.HoldExpired],
) -> Callable[[Session], tuple[int, Any]]:
    """A hold's move as the idempotency store runs it. A refusal *returned* by the ledger (an
    expired hold's capture) is answered as its problem while its move commits."""

    def act(s: Session) -> tuple[int, Any]:
        with refusals():
            result = action(s)
        if isinstance(result, domain.PaymentError):
            refusal = problem(result)
            return refusal.status, refusal
        return 200, _json(hold_of(result))

    return act


def _capture_action(hold_id: str, amount: int | None) -> Callable[[Session], tuple[int, Any]]:
    return _on_hold(lambda s: ledger.capture(s, hold_id, amount))


@router.post(
    "/holds/{hold_id}/capture",
    summary="Charge a hold, all of it or a part with the rest released (idempotent; final)",
    response_model=Hold,
    responses=answers("unknown-hold", "hold-settled", "hold-expired", "bad-capture-amount"),
)
def capture(
    hold_id: PathText,
    _: Operator,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
    body: Annotated[HoldCapture | None, Body()] = None,
) -> JSONResponse:
    amount = body.amount if body else None
    quick = ledger.quick_capture(store.claim_row(idem), hold_id, amount)
    return store.run(session, idem, _capture_action(hold_id, amount), quick=quick)


@router.post(
    "/holds/{hold_id}/release",
    summary="Return a hold's credits (idempotent; final)",
    response_model=Hold,
    responses=answers("unknown-hold", "hold-settled"),
)
def release(
    hold_id: PathText, _: Operator, idem: IdempotentRequestDep, store: IdemStoreDep, session: SessionDep
) -> JSONResponse:
    return store.run(session, idem, _on_hold(lambda s: ledger.release(s, hold_id)))


@router.post(
    "/holds/{hold_id}/extend",
    summary="Move an active hold's expiry",
    response_model=Hold,
    responses=answers("unknown-hold", "hold-settled", "hold-expired", "bad-expiry"),
)
def extend(
    hold_id: PathText,
    body: HoldExtend,
    _: Operator,
    idem: IdempotentRequestDep,
    store: IdemStoreDep,
    session: SessionDep,
) -> JSONResponse:
    return store.run(session, idem, _on_hold(lambda s: ledger.extend(s, hold_id, body.expires_at)))


# ------------------------------------------------------------------------------------ bulk
def _by(accounts: list[str]) -> list[int]:
    """The items' order of acting: by the account each one locks (then as sent), so that two
    batches lock their accounts in one order and never wait on each other in a cycle."""
    return sorted(range(len(accounts)), key=lambda n: accounts[n])


@router.post(
    "/bulk/holds",
    summary="Many holds in one request, each under its own key as POST /v1/holds",
    response_model=BulkAnswer,
    responses=documented(),
)
def bulk_holds(
    body: BulkRequest[dict[str, Any]], who: Operator, store: IdemStoreDep, session: SessionDep
) -> BulkAnswer:
    path = "/v1/holds"
    ops, accounts = [], []
    for item in body.items:
        account = item.request.get("account")
        accounts.append(account if isinstance(account, str) else "")
        hold = read_item(HoldCreate, item.request)
        if isinstance(hold, Problem):
            ops.append(BulkOp(item.key, path, refusal=hold))
            continue
        idem = item_request(who.name, item.key, "POST", path, path, item_body(item.request))
        ops.append(BulkOp(item.key, path, idem, _hold_action(hold), quick=_quick_hold(store, idem, hold)))
    return store.bulk(session, ops, order=_by(accounts))


@router.post(
    "/bulk/captures",
    summary="Many captures in one request, each under its own key as POST /v1/holds/{holdId}/capture",
    response_model=BulkAnswer,
    responses=documented(),
)
def bulk_captures(
    body: BulkRequest[dict[str, Any]], who: Operator, store: IdemStoreDep, session: SessionDep
) -> BulkAnswer:
    template = "/v1/holds/{hold_id}/capture"
    ops, holds = [], []
    for item in body.items:
        capture = read_item(CaptureRequest, item.request)
        if isinstance(capture, Problem):
            hold_id = item.request.get("holdId")
            path = template.format(hold_id=hold_id) if isinstance(hold_id, str) else "/v1/bulk/captures"
            ops.append(BulkOp(item.key, path, refusal=capture))
            continue
        path = template.format(hold_id=capture.hold_id)
        holds.append((len(ops), capture.hold_id))
        single = capture.single_body()
        idem = item_request(
            who.name, item.key, "POST", path, template, b"" if single is None else item_body(single)
        )
        quick = ledger.quick_capture(store.claim_row(idem), capture.hold_id, capture.amount)
        ops.append(
            BulkOp(
                item.key,
                path,
                idem,
                _capture_action(capture.hold_id, capture.amount),
                quick=quick,
            )
        )
    with session.begin():  # whose account each hold moves: the order its capture locks it in
        owners = ledger.owners(session, [hold_id for _, hold_id in holds])
    accounts = [""] * len(ops)
    for n, hold_id in holds:
        accounts[n] = owners.get(hold_id, "")
    return store.bulk(session, ops, order=_by(accounts))


# -------------------------------------------------------------------------------- auditing
@router.get(
    "/jobs/{job_id}/charges",
    summary="A job's holds and ledger movements (for the auditor)",
    response_model=Charges,
)
def job_charges(job_id: PathText, _: Reader, session: SessionDep) -> Charges:
    with session.begin():
        holds, entries = ledger.job_charges(session, job_id)
        return Charges(
            job_id=job_id,
            charged=sum(h.captured_amount for h in holds if h.state == HoldState.CAPTURED),
            holds=[hold_of(h) for h in holds],
            entries=[
                ChargeEntry(
                    transaction=e.txn_id,
                    kind=e.kind,
                    book=e.book,
                    amount=e.amount,
                    hold_id=e.hold_id,
                    at=aware(e.created_at),
                )
                for e in entries
            ],
        )


@router.get(
    "/ledger/check",
    summary="Prove the books balance and every balance matches its ledger",
    response_model=LedgerCheck,
)
def ledger_check(_: Reader, session: SessionDep) -> LedgerCheck:
    with session.begin():
        return ledger.check(session)
