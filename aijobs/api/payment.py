"""Payment's contract: what its callers send, what it answers, and which problem means what.

Credits live on accounts as ``available`` and ``held``; a job's price is reserved by a hold
(``active``), then charged (``captured``) or given back (``released``, or ``expired`` past its
expiry). The operator, the auditor, the admin CLI and the simulator's twin read these models;
the service answers them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, WithJsonSchema

from aijobs.api.base import Answer, Request
from aijobs.api.fields import Instant, Int, Text, Timestamp
from aijobs.api.problem import ProblemKind, by_slug
from aijobs.api.rules import ACCOUNT_NAME

__all__ = [
    "PROBLEMS",
    "Account",
    "AccountCreate",
    "AccountList",
    "CaptureRequest",
    "ChargeEntry",
    "Charges",
    "Hold",
    "HoldCapture",
    "HoldCreate",
    "HoldExtend",
    "HoldState",
    "LedgerCheck",
    "LedgerItem",
    "LedgerPage",
    "TopUp",
    "TopUpCreate",
]


class HoldState(StrEnum):
    """``active`` until settled; the three others are final."""

    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


AccountName = Annotated[str, Field(min_length=2, max_length=63, pattern=ACCOUNT_NAME)]


# ---------------------------------------------------------------------------------- requests
class AccountCreate(Request):
    id: AccountName


class TopUpCreate(Request):
    amount: Int = Field(gt=0, le=10**12)
    reason: Text = Field(default="", max_length=500, description="Why (kept in the admin audit trail)")


class HoldCreate(Request):
    account: AccountName
    job_id: Text = Field(min_length=1, max_length=128)
    amount: Int = Field(gt=0, le=10**9)
    expires_at: Timestamp | None = Field(default=None, description="Default: one hour from now")


class HoldExtend(Request):
    expires_at: Timestamp


# The bounds checked on the integer, and said in the schema as JSON Schema says them (pydantic
# would write an optional Int's bounds as ``gt``/``le``, which no schema reader knows).
CaptureAmount = Annotated[
    Int | None,
    Field(
        default=None,
        gt=0,
        le=10**9,
        description="Credits to charge, 1 to the hold's amount; the rest is released with it. "
        "Default: the whole hold",
    ),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "exclusiveMinimum": 0, "maximum": 10**9}, {"type": "null"}],
            "description": "Credits to charge, 1 to the hold's amount; the rest is released with it. "
            "Default: the whole hold",
        }
    ),
]


class HoldCapture(Request):
    """The optional body of ``POST /v1/holds/{id}/capture``: a partial capture. Sent with no body
    at all, a capture charges the whole hold (and fingerprints as that empty body)."""

    amount: CaptureAmount = None


class CaptureRequest(Request):
    """One item of ``POST /v1/bulk/captures``: the capture of ``holdId``, as the single route
    would be called: with no body when ``amount`` is absent (or null), with ``{"amount": N}``
    otherwise; the item's key fingerprints as that call."""

    hold_id: Text = Field(min_length=1, max_length=200)
    amount: CaptureAmount = None

    def single_body(self) -> dict[str, int] | None:
        """The body the single capture route is sent for this item (None: no body)."""
        return None if self.amount is None else {"amount": self.amount}


# ----------------------------------------------------------------------------------- answers
class Account(Answer):
    """An account's balances: ``balance`` is ``available + held``."""

    id: str
    available: int
    held: int
    balance: int


class AccountList(Answer):
    items: list[Account]


class TopUp(Answer):
    """A top-up: its ledger transaction and the account after it."""

    transaction: str
    account: Account


class Hold(Answer):
    id: str
    account: str
    job_id: str
    amount: int
    state: HoldState
    expires_at: Instant
    created_at: Instant
    settled_at: Instant | None = Field(description="When it left `active`; null while active")
    captured_amount: int = Field(
        default=0, description="Credits charged: the capture's amount once captured, 0 otherwise"
    )
    released_amount: int = Field(
        default=0,
        description="Credits given back: the rest of a partial capture, the whole hold once released "
        "or expired, 0 while active",
    )


class ChargeEntry(Answer):
    """One leg of a ledger transaction that moved a job's credits."""

    transaction: str
    kind: str = Field(description="hold, capture, release or expire")
    book: str = Field(description="<account>:available, <account>:held or system:revenue")
    amount: int
    hold_id: str | None
    at: Instant


class HoldPage(Answer):
    """Holds in id order, ``limit`` of them after ``after``; ``next`` is the ``after`` of the next
    page (null on the last). With ``state=active`` it is what is held right now: the auditor reads
    it each pass to find a hold left behind a finished job."""

    items: list[Hold]
    next: str | None


class Charges(Answer):
    """What Payment holds for one job (the auditor compares it with the job)."""

    job_id: str
    charged: int = Field(description="The credits the job's captures charged (their capturedAmount)")
    holds: list[Hold]
    entries: list[ChargeEntry]


class LedgerItem(Answer):
    """One movement on an account's books."""

    id: int
    transaction: str
    kind: str = Field(description="top-up, hold, capture, release or expire")
    book: str = Field(description="available or held")
    amount: int
    hold_id: str | None
    job_id: str | None
    at: Instant


class LedgerPage(Answer):
    """An account's movements, newest first; ``next`` is the ``before`` of the next page."""

    account: str
    items: list[LedgerItem]
    next: int | None


class LedgerCheck(Answer):
    """The books proved: every transaction sums to zero and every balance equals its ledger."""

    consistent: bool
    accounts: int
    transactions: int
    problems: list[str]


# ---------------------------------------------------------------------------------- problems
# By the slug of the domain error (``aijobs_services.payment.domain``) that causes it.
PROBLEMS = by_slug(
    ProblemKind(404, "unknown-account", "Unknown account"),
    ProblemKind(404, "unknown-hold", "Unknown hold"),
    ProblemKind(409, "account-exists", "Account exists"),
    ProblemKind(402, "insufficient-credits", "Not enough credits"),
    ProblemKind(422, "bad-expiry", "Invalid hold expiry"),
    ProblemKind(422, "bad-capture-amount", "Invalid capture amount"),
    ProblemKind(409, "hold-settled", "The hold is already settled"),
    ProblemKind(409, "hold-expired", "The hold expired"),
)
