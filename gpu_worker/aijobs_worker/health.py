"""Is the worker's loop going round, and can it reach work?

The loop stamps a :class:`Beat` at each turn: before a lease poll, after its answer, before an
idle wait, around each stage of a batch, before each retry's pause. Every beat says what comes
next and how long that may take (``within``), derived from the worker's own settings: a service
call is bounded by its timeout, a wait by its length, an inference batch by the model's time
budget, the other stages of a task by one lease (a stage of ours that outlasts the lease it runs
under has stopped). A loop that has not beaten again by then, plus a grace, is wedged: a GPU call
that never returns, a deadlock, an event loop blocked by a synchronous call. Heartbeats to the AI
service run beside the loop and keep its tasks leased meanwhile, so without this nobody notices:
the kubelet restarts the container when ``/healthz`` fails.

Readiness asks more: the loop is alive *and* its last lease poll was answered. A worker that
cannot reach the AI service does no work; it leaves the metrics Service's endpoints until it can.

The verdicts are pure functions of the last beat, the last poll and the time; :class:`Pulse`
only records them (plain attribute writes of frozen values, safe across the probe thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aijobs.health import Verdict

__all__ = ["Beat", "Poll", "Pulse", "liveness", "readiness"]


@dataclass(frozen=True)
class Beat:
    at: float  # monotonic seconds
    doing: str  # what the loop does next, said in the probe's answer
    within: float  # seconds within which the loop promises to beat again


@dataclass(frozen=True)
class Poll:
    at: float
    ok: bool
    error: str = ""


def liveness(beat: Beat | None, now: float, grace: float) -> Verdict:
    """Alive while the loop beats again within what its last beat promised, plus ``grace``.

    No beat yet means the worker is still starting (loading torch, the models, its spool): not
    alive yet, so that the startup probe, not liveness, gives a slow start its time."""
    if beat is None:
        return Verdict(False, "starting: the loop has not begun")
    late = now - beat.at - beat.within
    if late > grace:
        return Verdict(
            False,
            f"wedged: no progress for {now - beat.at:.0f}s while {beat.doing} "
            f"(bound {beat.within:.0f}s + {grace:.0f}s grace)",
        )
    return Verdict(True, f"{beat.doing} ({now - beat.at:.0f}s ago)")


def readiness(beat: Beat | None, poll: Poll | None, now: float, grace: float) -> Verdict:
    """Ready while alive and the last lease poll was answered (a busy worker polls again only
    when its batch is done: its last poll still stands)."""
    alive = liveness(beat, now, grace)
    if not alive.ok:
        return alive
    if poll is None:
        return Verdict(False, "no lease poll answered yet")
    if not poll.ok:
        return Verdict(False, f"the AI service did not answer the last lease poll: {poll.error}")
    return Verdict(True, f"last lease poll answered {now - poll.at:.0f}s ago")


class Pulse:
    """What the loop last did, for the probes."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self.last_beat: Beat | None = None
        self.last_poll: Poll | None = None

    def beat(self, doing: str, within: float) -> None:
        self.last_beat = Beat(self.clock(), doing, within)

    def polled(self, ok: bool, error: str = "") -> None:
        self.last_poll = Poll(self.clock(), ok, error)

    def live(self) -> Verdict:
        return liveness(self.last_beat, self.clock(), self.grace)

    def ready(self) -> Verdict:
        return readiness(self.last_beat, self.last_poll, self.clock(), self.grace)
