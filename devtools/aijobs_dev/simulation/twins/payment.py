"""The payment service's twin: Payment's own rules (``aijobs_services.payment.domain``) over
dicts instead of tables, answering Payment's wire models (``aijobs.api.payment``) and the problems
its contract names, so it moves money exactly as the service does: partial captures, and the
bulk routes, whose every item is the single route's call under the item's key (the twin's one
idempotency record, so an item and a single call with one key replay each other)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aijobs_services.payment import domain
from aijobs_services.payment.domain import HoldState
from pydantic import ValidationError

from aijobs.api import payment as wire
from aijobs.api.base import Answer
from aijobs.api.bulk import BulkAnswer, BulkRequest, ItemAnswer
from aijobs.api.problem import ProblemDetails, problem_type
from aijobs_dev.simulation.twins.base import Reply, Twin, _parts


@dataclass
class Hold:
    id: str
    account: str
    job_id: str
    amount: int
    state: HoldState
    expires_at: dt.datetime
    created_at: dt.datetime
    settled_at: dt.datetime | None = None
    captured_amount: int = 0

    def life(self) -> domain.HoldLife:
        return domain.HoldLife(self.id, self.state, self.expires_at, self.created_at, self.amount)

    def wire(self) -> wire.Hold:
        return wire.Hold(
            id=self.id,
            account=self.account,
            job_id=self.job_id,
            amount=self.amount,
            state=self.state,
            expires_at=self.expires_at,
            created_at=self.created_at,
            settled_at=self.settled_at,
            captured_amount=self.captured_amount,
            released_amount=domain.released(self.state, self.amount, self.captured_amount),
        )

    def public(self) -> dict[str, Any]:
        return self.wire().model_dump(by_alias=True, mode="json")


@dataclass
class Account:
    available: int = 0
    held: int = 0
    revenue: int = 0

    def balance(self) -> domain.Balance:
        return domain.Balance(self.available, self.held)

    def keep(self, balance: domain.Balance) -> None:
        self.available, self.held = balance.available, balance.held


@dataclass(frozen=True)
class Entry:
    """One ledger leg that moved a hold's credits (what ``/jobs/{id}/charges`` lists)."""

    transaction: str
    kind: domain.Movement
    book: str
    amount: int
    hold_id: str
    job_id: str
    at: dt.datetime


def _ok(status: int, answer: Answer) -> Reply:
    return Reply(status, answer.model_dump(by_alias=True, mode="json"))


def _refused(error: domain.PaymentError) -> Reply:
    kind = wire.PROBLEMS[error.slug]
    body = ProblemDetails.model_validate(
        {"type": problem_type(kind.slug), "title": kind.title, "status": kind.status, "detail": error.detail}
        | error.members
    )
    return Reply(kind.status, body.model_dump(exclude_none=True))


class PaymentTwin(Twin):
    name = "payment"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}
        self.entries: list[Entry] = []

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "POST" and p == ["holds"]:
            return self.place, ()
        if method == "POST" and p in (["bulk", "holds"], ["bulk", "captures"]):
            return (self.bulk_holds if p[1] == "holds" else self.bulk_captures), ()
        if method == "POST" and len(p) == 3 and p[0] == "holds" and p[2] in ("capture", "release"):
            return (self.capture if p[2] == "capture" else self.release), (p[1],)
        if method == "GET" and p == ["holds"]:
            return self.list_holds, ()
        if method == "GET" and len(p) == 2 and p[0] == "holds":
            return self.get, (p[1],)
        if method == "GET" and len(p) == 3 and p[0] == "jobs" and p[2] == "charges":
            return self.charges, (p[1],)
        return None

    def _hold(self, hold_id: str) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise domain.UnknownHold(hold_id)
        return hold

    def _record(self, kind: domain.Movement, hold: Hold, amount: int | None = None) -> None:
        transaction = self.new_id("txn")
        for book, signed in domain.legs(kind, hold.account, hold.amount if amount is None else amount):
            self.entries.append(Entry(transaction, kind, book, signed, hold.id, hold.job_id, self.clock()))

    def _settle(self, hold: Hold, move: domain.Move) -> None:
        if move.to is None:
            return
        account = self.accounts[hold.account]
        account.keep(domain.settle(account.balance(), hold.amount, move.to, move.captured))
        account.revenue += move.captured
        hold.state, hold.settled_at, hold.captured_amount = move.to, self.clock(), move.captured
        for kind, amount in domain.settlement(hold.amount, move.to, move.captured):
            self._record(kind, hold, amount)

    def place(self, *, body: Any, **_: Any) -> Reply:
        try:
            request = wire.HoldCreate.model_validate(body)
        except ValidationError as invalid:  # the operator's bug, answered as Payment would
            return Reply.problem(422, "validation-error", str(invalid))
        now = self.clock()
        try:
            expires = domain.hold_expiry(request.expires_at, now)
            account = self.accounts.get(request.account)
            if account is None:
                raise domain.UnknownAccount(request.account)
            account.keep(domain.reserve(request.account, account.balance(), request.amount))
        except domain.PaymentError as error:
            return _refused(error)
        hold = Hold(
            self.new_id("hold"),
            request.account,
            request.job_id,
            request.amount,
            HoldState.ACTIVE,
            expires,
            now,
        )
        self.holds[hold.id] = hold
        self._record("hold", hold)
        return _ok(201, hold.wire())

    def get(self, hold_id: str, **_: Any) -> Reply:
        try:
            return _ok(200, self._hold(hold_id).wire())
        except domain.PaymentError as error:
            return _refused(error)

    def capture(self, hold_id: str, *, body: Any = None, **_: Any) -> Reply:
        try:
            amount = None if body is None else wire.HoldCapture.model_validate(body).amount
        except ValidationError as invalid:
            return Reply.problem(422, "validation-error", str(invalid))
        try:
            hold = self._hold(hold_id)
            move = domain.capture(hold.life(), self.clock(), amount)
        except domain.PaymentError as error:
            return _refused(error)
        self._settle(hold, move)
        return _ok(200, hold.wire()) if move.refusal is None else _refused(move.refusal)

    def release(self, hold_id: str, **_: Any) -> Reply:
        try:
            hold = self._hold(hold_id)
            move = domain.release(hold.life())
        except domain.PaymentError as error:
            return _refused(error)
        self._settle(hold, move)
        return _ok(200, hold.wire())

    def list_holds(self, *, params: dict[str, str], **_: Any) -> Reply:
        try:
            state = HoldState(params["state"]) if "state" in params else None
            limit = int(params.get("limit", "500"))
            if not 1 <= limit <= 1000:
                raise ValueError(f"limit {limit} is out of 1..1000")
        except ValueError as invalid:
            return Reply.problem(422, "validation-error", str(invalid))
        after = params.get("after")
        chosen = sorted(
            (h for h in self.holds.values() if state in (None, h.state) and (after is None or h.id > after)),
            key=lambda h: h.id,
        )[:limit]
        last = chosen[-1].id if len(chosen) == limit else None
        return _ok(200, wire.HoldPage(items=[h.wire() for h in chosen], next=last))

    def charges(self, job_id: str, **_: Any) -> Reply:
        holds = [h for h in self.holds.values() if h.job_id == job_id]
        entries = [
            wire.ChargeEntry(
                transaction=e.transaction,
                kind=e.kind,
                book=e.book,
                amount=e.amount,
                hold_id=e.hold_id,
                at=e.at,
            )
            for e in self.entries
            if e.job_id == job_id
        ]
        return _ok(
            200,
            wire.Charges(
                job_id=job_id,
                charged=sum(h.captured_amount for h in holds if h.state is HoldState.CAPTURED),
                holds=[h.wire() for h in holds],
                entries=entries,
            ),
        )

    # --------------------------------------------------------------------------------- bulk
    def _item(self, key: str, path: str, body: Any) -> ItemAnswer:
        """One item: the single route's call under the item's key, as :meth:`handle` runs it."""
        before = self._idem.get(key)
        reply = self.handle("POST", path, key, body, {}, b"")
        replayed = before is not None and reply is before[1]  # the answer kept for the key
        return ItemAnswer(key=key, status=reply.status, replayed=replayed, body=reply.body)

    def _bulk(self, body: Any, item: Callable[[str, Any], ItemAnswer]) -> Reply:
        try:
            request = BulkRequest[dict[str, Any]].model_validate(body)
        except ValidationError as invalid:
            return Reply.problem(422, "validation-error", str(invalid))
        return _ok(200, BulkAnswer(items=[item(i.key, i.request) for i in request.items]))

    def bulk_holds(self, *, body: Any, **_: Any) -> Reply:
        def item(key: str, request: dict[str, Any]) -> ItemAnswer:
            try:
                wire.HoldCreate.model_validate(request)
            except ValidationError as invalid:  # the item's own 422, nothing kept under its key
                return ItemAnswer(
                    key=key, status=422, body=Reply.problem(422, "validation-error", str(invalid)).body
                )
            return self._item(key, "/v1/holds", request)

        return self._bulk(body, item)

    def bulk_captures(self, *, body: Any, **_: Any) -> Reply:
        def item(key: str, request: dict[str, Any]) -> ItemAnswer:
            try:
                capture = wire.CaptureRequest.model_validate(request)
            except ValidationError as invalid:
                return ItemAnswer(
                    key=key, status=422, body=Reply.problem(422, "validation-error", str(invalid)).body
                )
            return self._item(key, f"/v1/holds/{capture.hold_id}/capture", capture.single_body())

        return self._bulk(body, item)

    def sweep(self) -> None:
        """Payment's expiry sweep: an active hold past its expiry returns its credits."""
        now = self.clock()
        for hold in self.holds.values():
            if domain.due(hold.life(), now):
                self._settle(hold, domain.Move(HoldState.EXPIRED))
