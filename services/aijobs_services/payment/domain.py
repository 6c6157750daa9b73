"""Payment's rules, with no HTTP and no SQL: the service (``ledger.py``) and the simulator's twin
both decide with these functions, so the twin cannot drift from the service.

A hold's life: ``active`` -> ``captured`` | ``released`` | ``expired``, the last three final.

- place: the expiry lies in (now, now + MAX_HOLD]; the account has the credits available.
- capture: an active, unexpired hold is charged, all of it or a part ``1 <= N <= amount``, the
  rest going back to ``available`` in the same move (the hold is ``captured`` either way: a
  partial capture is final too); capturing a captured hold again changes nothing
  (a retry after a lost answer must not charge twice); an active hold past its expiry is expired
  *and* the capture refused, both together; a released or expired hold is refused.
- release: an active hold's credits go back; releasing a released or expired hold changes
  nothing; a captured hold is refused (a charge is never undone silently).
- extend: only an active, unexpired hold, to at most MAX_HOLD after it was placed.
- sweep: an active hold past its expiry expires.

Money moves as balanced transactions between books (:func:`legs`): ``<account>:available``,
``<account>:held``, ``system:funding`` (where top-ups come from), ``system:revenue`` (where
captures go).

Refusals are :class:`PaymentError` exceptions; a ``slug`` names each, and the wire contract
(``aijobs.api.payment.PROBLEMS``) says how each is answered::

    PaymentError
    ├── UnknownAccount
    ├── UnknownHold
    ├── AccountExists
    ├── InsufficientCredits      fewer credits available than the hold needs
    ├── BadExpiry                an expiry outside what a hold may have
    ├── BadCaptureAmount         a partial capture outside 1..the hold's amount
    ├── HoldSettled              the hold's final state forbids the action
    └── HoldExpired              an active hold past its expiry
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, Literal

from aijobs.api.payment import HoldState
from aijobs.api.rules import MAX_HOLD

__all__ = [
    "DEFAULT_HOLD",
    "FUNDING",
    "REVENUE",
    "AccountExists",
    "BadCaptureAmount",
    "BadExpiry",
    "Balance",
    "HoldExpired",
    "HoldLife",
    "HoldSettled",
    "HoldState",
    "InsufficientCredits",
    "Move",
    "Movement",
    "PaymentError",
    "UnknownAccount",
    "UnknownHold",
    "capture",
    "due",
    "extend",
    "hold_expiry",
    "legs",
    "movement",
    "release",
    "released",
    "reserve",
    "settle",
    "settlement",
    "top_up",
]

FUNDING = "system:funding"
REVENUE = "system:revenue"
# A hold placed without an expiry lasts this long.
DEFAULT_HOLD = dt.timedelta(hours=1)

Movement = Literal["top-up", "hold", "capture", "release", "expire"]


# ------------------------------------------------------------------------------------ errors
class PaymentError(Exception):
    """A refusal. ``detail`` says what happened; ``members`` are facts a client may act on."""

    slug: ClassVar[str]

    def __init__(self, detail: str, **members: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.members = members


class UnknownAccount(PaymentError):
    slug = "unknown-account"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"no account {account_id!r}")


class UnknownHold(PaymentError):
    slug = "unknown-hold"

    def __init__(self, hold_id: str) -> None:
        super().__init__(f"no hold {hold_id!r}")


class AccountExists(PaymentError):
    slug = "account-exists"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} already exists")


class InsufficientCredits(PaymentError):
    slug = "insufficient-credits"

    def __init__(self, account_id: str, available: int, requested: int) -> None:
        super().__init__(
            f"account {account_id!r} has {available} credits available; the hold needs {requested}",
            available=available,
            requested=requested,
        )


class BadExpiry(PaymentError):
    slug = "bad-expiry"


class HoldSettled(PaymentError):
    slug = "hold-settled"

    def __init__(self, hold_id: str, state: HoldState, action: str) -> None:
        super().__init__(f"hold {hold_id} was {state}; it can't be {action}", state=str(state))


class BadCaptureAmount(PaymentError):
    slug = "bad-capture-amount"

    def __init__(self, hold_id: str, amount: int, held: int) -> None:
        super().__init__(
            f"hold {hold_id} holds {held} credits; a capture takes 1 to {held}, not {amount}",
            requested=amount,
            held=held,
        )


class HoldExpired(PaymentError):
    slug = "hold-expired"

    def __init__(self, hold_id: str, expired_at: dt.datetime, *, returned: bool) -> None:
        returned_ = "; credits returned" if returned else ""
        super().__init__(f"hold {hold_id} expired at {expired_at.isoformat()}{returned_}")


# ------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Balance:
    """An account's credits: ``available`` to hold, ``held`` by active holds. Never negative:
    a rule that would make one so is a bug, refused here as the database's CHECK refuses it."""

    available: int
    held: int

    def __post_init__(self) -> None:
        if self.available < 0 or self.held < 0:
            raise ValueError(f"a balance went negative: {self}")


@dataclass(frozen=True)
class HoldLife:
    """What the rules read of a hold."""

    id: str
    state: HoldState
    expires_at: dt.datetime
    created_at: dt.datetime
    amount: int  # the credits held


@dataclass(frozen=True)
class Move:
    """What an action does to a hold: the state it moves to (None: it stays as it is), the
    credits a capture charges (the rest of the hold goes back), and the refusal to answer
    *after* that move is kept (an expired hold's capture returns its credits and is refused;
    the two commit together)."""

    to: HoldState | None = None
    refusal: HoldExpired | None = None
    captured: int = 0


STAY = Move()

_MOVEMENT: dict[HoldState, Movement] = {
    HoldState.CAPTURED: "capture",
    HoldState.RELEASED: "release",
    HoldState.EXPIRED: "expire",
}


# ------------------------------------------------------------------------------------- rules
def top_up(balance: Balance, amount: int) -> Balance:
    return Balance(balance.available + amount, balance.held)


def hold_expiry(requested: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """A new hold's expiry: the one asked for, or an hour; in the future, within MAX_HOLD."""
    expires_at = now + DEFAULT_HOLD if requested is None else requested
    if not now < expires_at <= now + MAX_HOLD:
        raise BadExpiry(f"expiresAt must be in the future and within {MAX_HOLD.days} days")
    return expires_at


def reserve(account_id: str, balance: Balance, amount: int) -> Balance:
    """The balance after a hold of ``amount``: available -> held, if available covers it."""
    if balance.available < amount:
        raise InsufficientCredits(account_id, balance.available, amount)
    return Balance(balance.available - amount, balance.held + amount)


def settle(balance: Balance, amount: int, to: HoldState, captured: int = 0) -> Balance:
    """The balance after a hold of ``amount`` leaves ``active`` for ``to``: its credits leave
    ``held``, ``captured`` of them for revenue, the rest back to ``available``."""
    return Balance(balance.available + amount - captured, balance.held - amount)


def capture(hold: HoldLife, now: dt.datetime, amount: int | None = None) -> Move:
    """Charge ``amount`` of the hold (all of it when None) and give the rest back."""
    if hold.state is HoldState.CAPTURED:
        return STAY
    if hold.state is not HoldState.ACTIVE:
        raise HoldSettled(hold.id, hold.state, "captured")
    charged = hold.amount if amount is None else amount
    if not 1 <= charged <= hold.amount:
        raise BadCaptureAmount(hold.id, charged, hold.amount)
    if hold.expires_at <= now:
        return Move(HoldState.EXPIRED, HoldExpired(hold.id, hold.expires_at, returned=True))
    return Move(HoldState.CAPTURED, captured=charged)


def release(hold: HoldLife) -> Move:
    if hold.state is HoldState.CAPTURED:
        raise HoldSettled(hold.id, hold.state, "released")
    if hold.state is HoldState.ACTIVE:
        return Move(HoldState.RELEASED)
    return STAY


def extend(hold: HoldLife, expires_at: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The hold's new expiry: later than now, at most MAX_HOLD after the hold was placed."""
    if hold.state is not HoldState.ACTIVE:
        raise HoldSettled(hold.id, hold.state, "extended")
    if hold.expires_at <= now:
        raise HoldExpired(hold.id, hold.expires_at, returned=False)
    if not now < expires_at <= hold.created_at + MAX_HOLD:
        raise BadExpiry(f"expiresAt must be in the future and within {MAX_HOLD.days} days of the hold")
    return expires_at


def due(hold: HoldLife, now: dt.datetime) -> bool:
    """Whether the sweep expires the hold."""
    return hold.state is HoldState.ACTIVE and hold.expires_at <= now


def movement(to: HoldState) -> Movement:
    """The ledger's name for a hold leaving ``active`` for ``to``."""
    return _MOVEMENT[to]


def settlement(amount: int, to: HoldState, captured: int = 0) -> tuple[tuple[Movement, int], ...]:
    """The ledger transactions that settle a hold of ``amount`` for ``to``: a capture of what
    is charged, then a release of the rest (none of an empty part)."""
    if to is not HoldState.CAPTURED:
        return ((movement(to), amount),)
    parts: tuple[tuple[Movement, int], ...] = (("capture", captured), ("release", amount - captured))
    return tuple((kind, part) for kind, part in parts if part)


def released(state: HoldState, amount: int, captured: int) -> int:
    """The credits a hold gave back to ``available``: none while active, the rest after a
    (partial) capture, all of it after a release or expiry."""
    if state is HoldState.ACTIVE:
        return 0
    return amount - captured if state is HoldState.CAPTURED else amount


def legs(kind: Movement, account_id: str, amount: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """The transaction that moves ``amount`` for ``kind``: (book, signed amount), summing to 0."""
    available, held = f"{account_id}:available", f"{account_id}:held"
    source, sink = {
        "top-up": (FUNDING, available),
        "hold": (available, held),
        "capture": (held, REVENUE),
        "release": (held, available),
        "expire": (held, available),
    }[kind]
    return (source, -amount), (sink, amount)
