"""Payment's rules as tables: a hold's life, the balances and the ledger's legs, without a
database (the same functions decide in the service and in the simulator's twin)."""

from __future__ import annotations

import datetime as dt

import pytest
from aijobs_services.payment import domain
from aijobs_services.payment.domain import Balance, HoldLife, HoldState, Move

from aijobs.api.payment import PROBLEMS
from aijobs.api.rules import MAX_HOLD

NOW = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _hold(
    state: HoldState = HoldState.ACTIVE, expires_in: dt.timedelta = HOUR, age: dt.timedelta = HOUR
) -> HoldLife:
    return HoldLife("hold-1", state, NOW + expires_in, NOW - age, 30)


@pytest.mark.parametrize(
    ("hold", "move", "refused"),
    [
        pytest.param(_hold(), Move(HoldState.CAPTURED, captured=30), None, id="active-is-charged"),
        pytest.param(_hold(HoldState.CAPTURED), Move(), None, id="captured-again-changes-nothing"),
        pytest.param(_hold(HoldState.RELEASED), None, domain.HoldSettled, id="released-is-refused"),
        pytest.param(_hold(HoldState.EXPIRED), None, domain.HoldSettled, id="expired-is-refused"),
        pytest.param(
            _hold(expires_in=-HOUR),
            Move(HoldState.EXPIRED),
            domain.HoldExpired,
            id="past-expiry-expires-and-refuses",
        ),
        pytest.param(
            _hold(expires_in=dt.timedelta(0)),
            Move(HoldState.EXPIRED),
            domain.HoldExpired,
            id="at-expiry-is-too-late",
        ),
    ],
)
def test_capture_charges_only_an_active_unexpired_hold(
    hold: HoldLife, move: Move | None, refused: type[domain.PaymentError] | None
) -> None:
    if move is None:
        assert refused is not None
        with pytest.raises(refused):
            domain.capture(hold, NOW)
        return
    got = domain.capture(hold, NOW)
    assert got.to == move.to
    assert got.captured == move.captured
    assert type(got.refusal) is refused if refused else got.refusal is None


@pytest.mark.parametrize(
    ("state", "to"),
    [
        pytest.param(HoldState.ACTIVE, HoldState.RELEASED, id="active-is-released"),
        pytest.param(HoldState.RELEASED, None, id="released-again-changes-nothing"),
        pytest.param(HoldState.EXPIRED, None, id="expired-changes-nothing"),
    ],
)
def test_release_returns_an_active_holds_credits_once(state: HoldState, to: HoldState | None) -> None:
    assert domain.release(_hold(state)) == Move(to)


def test_a_captured_hold_is_never_released() -> None:
    with pytest.raises(domain.HoldSettled) as refused:
        domain.release(_hold(HoldState.CAPTURED))
    assert refused.value.members == {"state": "captured"}


def test_an_active_hold_past_its_expiry_can_still_be_released() -> None:
    """The job gives up after the expiry: the credits come back all the same."""
    assert domain.release(_hold(expires_in=-HOUR)) == Move(HoldState.RELEASED)


@pytest.mark.parametrize(
    ("hold", "to", "refused"),
    [
        pytest.param(_hold(), NOW + 2 * HOUR, None, id="later"),
        pytest.param(_hold(), NOW + 30 * dt.timedelta(minutes=1), None, id="sooner-but-future"),
        pytest.param(_hold(age=HOUR), NOW - HOUR + MAX_HOLD, None, id="to-the-limit"),
        pytest.param(_hold(age=HOUR), NOW - HOUR + MAX_HOLD + HOUR, domain.BadExpiry, id="past-the-limit"),
        pytest.param(_hold(), NOW, domain.BadExpiry, id="now"),
        pytest.param(_hold(expires_in=-HOUR), NOW + HOUR, domain.HoldExpired, id="already-expired"),
        pytest.param(_hold(HoldState.CAPTURED), NOW + HOUR, domain.HoldSettled, id="captured"),
        pytest.param(_hold(HoldState.RELEASED), NOW + HOUR, domain.HoldSettled, id="released"),
    ],
)
def test_extend_moves_only_an_active_holds_expiry_within_its_life(
    hold: HoldLife, to: dt.datetime, refused: type[domain.PaymentError] | None
) -> None:
    if refused:
        with pytest.raises(refused):
            domain.extend(hold, to, NOW)
    else:
        assert domain.extend(hold, to, NOW) == to


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        pytest.param(None, NOW + HOUR, id="default-an-hour"),
        pytest.param(NOW + MAX_HOLD, NOW + MAX_HOLD, id="the-longest"),
        pytest.param(NOW + MAX_HOLD + dt.timedelta(seconds=1), domain.BadExpiry, id="longer-than-allowed"),
        pytest.param(NOW, domain.BadExpiry, id="now"),
        pytest.param(NOW - HOUR, domain.BadExpiry, id="past"),
    ],
)
def test_a_new_holds_expiry_is_in_the_future_within_the_longest_hold(
    requested: dt.datetime | None, expected: dt.datetime | type[domain.BadExpiry]
) -> None:
    if isinstance(expected, dt.datetime):
        assert domain.hold_expiry(requested, NOW) == expected
    else:
        with pytest.raises(expected):
            domain.hold_expiry(requested, NOW)


@pytest.mark.parametrize(
    ("balance", "amount", "after"),
    [
        pytest.param(Balance(100, 0), 30, Balance(70, 30), id="part"),
        pytest.param(Balance(30, 5), 30, Balance(0, 35), id="all-available"),
        pytest.param(Balance(29, 5), 30, None, id="one-short"),
        pytest.param(Balance(0, 0), 1, None, id="empty"),
    ],
)
def test_a_hold_reserves_only_available_credits(balance: Balance, amount: int, after: Balance | None) -> None:
    if after is not None:
        assert domain.reserve("acme", balance, amount) == after
        return
    with pytest.raises(domain.InsufficientCredits) as refused:
        domain.reserve("acme", balance, amount)
    assert refused.value.members == {"available": balance.available, "requested": amount}


@pytest.mark.parametrize(
    ("to", "captured", "after"),
    [
        pytest.param(HoldState.CAPTURED, 30, Balance(70, 0), id="captured-goes-to-revenue"),
        pytest.param(HoldState.CAPTURED, 12, Balance(88, 0), id="partly-captured-the-rest-comes-back"),
        pytest.param(HoldState.RELEASED, 0, Balance(100, 0), id="released-comes-back"),
        pytest.param(HoldState.EXPIRED, 0, Balance(100, 0), id="expired-comes-back"),
    ],
)
def test_settling_a_hold_empties_held(to: HoldState, captured: int, after: Balance) -> None:
    assert domain.settle(Balance(70, 30), 30, to, captured) == after


def test_a_balance_never_goes_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        domain.settle(Balance(0, 10), 30, HoldState.RELEASED)


@pytest.mark.parametrize(
    ("kind", "legs"),
    [
        pytest.param("top-up", (("system:funding", -5), ("acme:available", 5)), id="top-up"),
        pytest.param("hold", (("acme:available", -5), ("acme:held", 5)), id="hold"),
        pytest.param("capture", (("acme:held", -5), ("system:revenue", 5)), id="capture"),
        pytest.param("release", (("acme:held", -5), ("acme:available", 5)), id="release"),
        pytest.param("expire", (("acme:held", -5), ("acme:available", 5)), id="expire"),
    ],
)
def test_every_movement_is_a_balanced_transaction(
    kind: domain.Movement, legs: tuple[tuple[str, int], ...]
) -> None:
    assert domain.legs(kind, "acme", 5) == legs
    assert sum(amount for _, amount in legs) == 0


@pytest.mark.parametrize(
    ("hold", "due"),
    [
        pytest.param(_hold(expires_in=-HOUR), True, id="active-past-expiry"),
        pytest.param(_hold(expires_in=dt.timedelta(0)), True, id="active-at-expiry"),
        pytest.param(_hold(), False, id="active-before-expiry"),
        pytest.param(_hold(HoldState.CAPTURED, expires_in=-HOUR), False, id="captured"),
        pytest.param(_hold(HoldState.RELEASED, expires_in=-HOUR), False, id="released"),
    ],
)
def test_the_sweep_expires_only_active_holds_past_their_expiry(hold: HoldLife, due: bool) -> None:
    assert domain.due(hold, NOW) is due


def test_every_domain_refusal_has_an_answer_in_the_contract() -> None:
    kinds: list[type[domain.PaymentError]] = [
        domain.UnknownAccount,
        domain.UnknownHold,
        domain.AccountExists,
        domain.InsufficientCredits,
        domain.BadExpiry,
        domain.BadCaptureAmount,
        domain.HoldSettled,
        domain.HoldExpired,
    ]
    assert set(domain.PaymentError.__subclasses__()) == set(kinds)
    assert {k.slug for k in kinds} == set(PROBLEMS)


@pytest.mark.parametrize(
    ("amount", "move", "refused"),
    [
        pytest.param(None, Move(HoldState.CAPTURED, captured=30), None, id="no-amount-charges-it-all"),
        pytest.param(30, Move(HoldState.CAPTURED, captured=30), None, id="the-whole-amount"),
        pytest.param(12, Move(HoldState.CAPTURED, captured=12), None, id="a-part-the-rest-released"),
        pytest.param(1, Move(HoldState.CAPTURED, captured=1), None, id="the-least-part"),
        pytest.param(0, None, domain.BadCaptureAmount, id="nothing-is-refused"),
        pytest.param(31, None, domain.BadCaptureAmount, id="more-than-held-is-refused"),
    ],
)
def test_a_partial_capture_charges_a_part_of_the_hold(
    amount: int | None, move: Move | None, refused: type[domain.PaymentError] | None
) -> None:
    if move is None:
        assert refused is not None
        with pytest.raises(refused) as error:
            domain.capture(_hold(), NOW, amount)
        assert error.value.members == {"requested": amount, "held": 30}
        assert PROBLEMS[error.value.slug].status == 422
        return
    assert domain.capture(_hold(), NOW, amount) == move


def test_capturing_a_captured_hold_again_changes_nothing_whatever_the_amount() -> None:
    assert domain.capture(_hold(HoldState.CAPTURED), NOW, 99) == Move()


@pytest.mark.parametrize(
    ("to", "captured", "transactions", "released"),
    [
        pytest.param(HoldState.CAPTURED, 30, (("capture", 30),), 0, id="whole-capture"),
        pytest.param(
            HoldState.CAPTURED, 12, (("capture", 12), ("release", 18)), 18, id="partial-capture-releases-rest"
        ),
        pytest.param(HoldState.RELEASED, 0, (("release", 30),), 30, id="release"),
        pytest.param(HoldState.EXPIRED, 0, (("expire", 30),), 30, id="expiry"),
    ],
)
def test_a_settlement_is_recorded_as_a_capture_and_a_release_of_the_rest(
    to: HoldState, captured: int, transactions: tuple[tuple[str, int], ...], released: int
) -> None:
    assert domain.settlement(30, to, captured) == transactions
    assert domain.released(to, 30, captured) == released
    assert domain.released(HoldState.ACTIVE, 30, 0) == 0
