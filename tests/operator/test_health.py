"""The operator's probes: alive while its Lease loop goes round; Ready as a standby waiting for
the Lease, or as the leader whose watches are heard from; never while the API server does not
answer its Lease rounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aijobs_operator.health import LeaseRound, Vitals, liveness, readiness, tap_watch_streams

LEASE = 15.0
SILENCE = 140.0
WATCHED = ("aiimagejobs", "creditaccounts")


@pytest.mark.parametrize(
    ("last", "now", "ok", "says"),
    [
        pytest.param(None, 10.0, False, "starting", id="no-round-yet"),
        pytest.param(LeaseRound(100.0, "standby", True), 103.0, True, "standby", id="standby-trying"),
        pytest.param(LeaseRound(100.0, "leader", True), 105.0, True, "leader", id="leader-renewing"),
        pytest.param(
            LeaseRound(100.0, "leader", False, "timeout"),
            110.0,
            True,
            "leader",
            id="failed-round-still-a-round",
        ),
        pytest.param(LeaseRound(100.0, "leader", True), 130.0, True, "leader", id="at-the-bound"),
        pytest.param(LeaseRound(100.0, "leader", True), 131.0, False, "stuck", id="leader-loop-stuck"),
        pytest.param(LeaseRound(100.0, "standby", True), 200.0, False, "stuck", id="standby-loop-stuck"),
    ],
)
def test_liveness(last: LeaseRound | None, now: float, ok: bool, says: str) -> None:
    verdict = liveness(last, now, LEASE)
    assert verdict.ok is ok
    assert says in verdict.reason


FRESH = {"aiimagejobs": 95.0, "creditaccounts": 99.0}


@pytest.mark.parametrize(
    ("last", "heard", "now", "ok", "says"),
    [
        pytest.param(None, {}, 10.0, False, "starting", id="starting"),
        pytest.param(LeaseRound(99.0, "standby", True), {}, 100.0, True, "standing by", id="healthy-standby"),
        pytest.param(
            LeaseRound(99.0, "standby", False, "Service Unavailable"),
            {},
            100.0,
            False,
            "did not answer",
            id="standby-without-api",
        ),
        pytest.param(LeaseRound(99.0, "leader", True), FRESH, 100.0, True, "leading", id="leader-watching"),
        pytest.param(
            LeaseRound(99.0, "leader", True),
            {"aiimagejobs": 95.0},
            100.0,
            False,
            "creditaccounts has not listed",
            id="leader-before-a-listing",
        ),
        pytest.param(
            LeaseRound(230.0, "leader", True),
            FRESH,
            235.0,
            True,
            "leading",
            id="quiet-but-within-bound",
        ),
        pytest.param(
            LeaseRound(240.0, "leader", True),
            FRESH,
            240.0,
            False,
            "aiimagejobs is silent for 145s",
            id="leader-with-a-dead-watch",
        ),
        pytest.param(
            LeaseRound(99.0, "leader", False, "Service Unavailable"),
            FRESH,
            100.0,
            False,
            "did not answer",
            id="leader-failing-to-renew",
        ),
        pytest.param(LeaseRound(50.0, "leader", True), FRESH, 100.0, False, "stuck", id="stuck-is-unready"),
    ],
)
def test_readiness(last: LeaseRound | None, heard: dict[str, float], now: float, ok: bool, says: str) -> None:
    verdict = readiness(last, heard, WATCHED, now, LEASE, SILENCE)
    assert verdict.ok is ok
    assert says in verdict.reason


async def test_whatever_a_watch_stream_delivers_counts_as_heard_bookmarks_included() -> None:
    clock = SimpleNamespace(now=100.0)
    vitals = Vitals(LEASE, WATCHED, SILENCE, clock=lambda: clock.now)
    vitals.lease_round("leader", answered=True)
    delivered: list[Any] = []

    async def infinite_watch(*, resource: Any, **_: Any) -> AsyncIterator[Any]:
        for event in ({"type": None}, "LISTED", {"type": "BOOKMARK"}):
            clock.now += 1
            yield event

    watching = SimpleNamespace(infinite_watch=infinite_watch)
    tap_watch_streams(vitals, watching)
    tap_watch_streams(vitals, watching)  # tapping twice taps once
    assert not vitals.ready().ok  # nothing heard yet
    for plural in WATCHED:
        async for event in watching.infinite_watch(resource=SimpleNamespace(plural=plural), namespace=None):
            delivered.append(event)
    assert len(delivered) == 6  # the stream itself is passed through untouched
    assert vitals.heard == {"aiimagejobs": 103.0, "creditaccounts": 106.0}
    assert vitals.ready().ok
    clock.now += SILENCE
    vitals.lease_round("leader", answered=True)
    assert "aiimagejobs is silent" in vitals.ready().reason


def test_kopf_still_has_the_stream_that_is_tapped() -> None:
    """The tap wraps a function of kopf's private watching module: an upgrade of kopf that moves
    it must fail here, not silently leave the leader unready."""
    from kopf._cogs.clients import watching
    from kopf._core.reactor import queueing

    assert queueing.watching is watching
    assert callable(watching.infinite_watch)
