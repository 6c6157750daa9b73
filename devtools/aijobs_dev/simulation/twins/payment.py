"""The payment service's twin."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aijobs.api.rules import MAX_HOLD
from aijobs_dev.simulation.twins.base import Reply, Twin, _iso, _parse, _parts


@dataclass
class Hold:
    id: str
    account: str
    job_id: str
    amount: int
    state: str
    expires_at: dt.datetime
    created_at: dt.datetime
    settled_at: dt.datetime | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "jobId": self.job_id,
            "amount": self.amount,
            "state": self.state,
            "expiresAt": _iso(self.expires_at),
            "createdAt": _iso(self.created_at),
            "settledAt": _iso(self.settled_at) if self.settled_at else None,
        }


@dataclass
class Account:
    available: int = 0
    held: int = 0
    revenue: int = 0


class PaymentTwin(Twin):
    name = "payment"

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(clock)
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}

    def route(self, method: str, path: str) -> tuple[Callable[..., Reply], tuple[str, ...]] | None:
        p = _parts(path)
        if method == "POST" and p == ["holds"]:
            return self.place, ()
        if method == "POST" and len(p) == 3 and p[0] == "holds" and p[2] in ("capture", "release"):
            return (self.capture if p[2] == "capture" else self.release), (p[1],)
        if method == "GET" and len(p) == 2 and p[0] == "holds":
            return self.get, (p[1],)
        if method == "GET" and len(p) == 3 and p[0] == "jobs" and p[2] == "charges":
            return self.charges, (p[1],)
        return None

    def _unhold(self, hold: Hold, state: str) -> None:
        account = self.accounts[hold.account]
        account.held -= hold.amount
        if state == "captured":
            account.revenue += hold.amount
        else:
            account.available += hold.amount
        hold.state, hold.settled_at = state, self.clock()
        assert account.available >= 0 and account.held >= 0, "a balance went negative"

    def place(self, *, body: Any, **_: Any) -> Reply:
        now = self.clock()
        expires = _parse(body["expiresAt"]) if body.get("expiresAt") else now + dt.timedelta(hours=1)
        if not now < expires <= now + MAX_HOLD:
            return Reply.problem(
                422, "bad-expiry", f"expiresAt must be in the future and within {MAX_HOLD.days} days"
            )
        account = self.accounts.get(body["account"])
        if account is None:
            return Reply.problem(404, "unknown-account", f"no account {body['account']!r}")
        amount = body["amount"]
        if account.available < amount:
            return Reply.problem(
                402,
                "insufficient-credits",
                f"account {body['account']!r} has {account.available} credits available; "
                f"the hold needs {amount}",
                available=account.available,
                requested=amount,
            )
        account.available -= amount
        account.held += amount
        hold = Hold(self.new_id("hold"), body["account"], body["jobId"], amount, "active", expires, now)
        self.holds[hold.id] = hold
        return Reply(201, hold.public())

    def get(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        return Reply(200, hold.public())

    def capture(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        if hold.state == "captured":
            return Reply(200, hold.public())
        if hold.state != "active":
            return Reply.problem(
                409, "hold-settled", f"hold {hold_id} was {hold.state}; it can't be captured"
            )
        if hold.expires_at <= self.clock():
            self._unhold(hold, "expired")
            return Reply.problem(409, "hold-expired", f"hold {hold_id} expired; credits returned")
        self._unhold(hold, "captured")
        return Reply(200, hold.public())

    def release(self, hold_id: str, **_: Any) -> Reply:
        hold = self.holds.get(hold_id)
        if hold is None:
            return Reply.problem(404, "unknown-hold", f"no hold {hold_id!r}")
        if hold.state == "captured":
            return Reply.problem(409, "hold-settled", f"hold {hold_id} was captured; it can't be released")
        if hold.state == "active":
            self._unhold(hold, "released")
        return Reply(200, hold.public())

    def charges(self, job_id: str, **_: Any) -> Reply:
        holds = [h for h in self.holds.values() if h.job_id == job_id]
        return Reply(
            200,
            {
                "jobId": job_id,
                "charged": sum(h.amount for h in holds if h.state == "captured"),
                "holds": [h.public() for h in holds],
            },
        )

    def sweep(self) -> None:
        """Payment's expiry sweep: an active hold past its expiry returns its credits."""
        now = self.clock()
        for hold in self.holds.values():
            if hold.state == "active" and hold.expires_at <= now:
                self._unhold(hold, "expired")


# ---------------------------------------------------------------------------------- storage
