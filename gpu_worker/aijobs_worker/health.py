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

The loop's stages run side by side (the next batch is leased and fetched while this one infers,
results are delivered while the next ones infer), so each stage beats in a *lane* of its own:
``loop`` for the loop itself, one for the batch being prefetched, one per delivery in flight. A
lane is dropped when its stage ends (it promises nothing more); the worker is alive while every
lane keeps its promise, so one stage that hangs is seen even while the others go round. A lane
that only waits for another (the loop awaiting the prefetched batch, or a free delivery slot)
promises no bound of its own (``within`` is infinite): the lane it waits on has one.

Readiness asks more: the loop is alive *and* its last lease poll was answered. A worker that
cannot reach the AI service does no work; it leaves the metrics Service's endpoints until it can.

The verdicts are pure functions of the last beats, the last poll and the time; :class:`Pulse`
only records them (plain attribute writes of frozen values, a lane's beat replacing the whole
mapping of lanes, safe across the probe thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aijobs.health import Verdict

__all__ = ["LOOP", "Beat", "Poll", "Pulse", "liveness", "liveness_of_lanes", "readiness"]

# The loop's own lane: the one that beats from the worker's start to its end.
LOOP = "loop"


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


def liveness_of_lanes(beats: Mapping[str, Beat], now: float, grace: float) -> Verdict:
    """Alive while every lane's last beat is kept (:func:`liveness` of each); the reason names
    the lanes that are late, or else what each lane does (the loop's first, unnamed)."""
    if not beats:
        return liveness(None, now, grace)
    verdicts = [(lane, liveness(beat, now, grace)) for lane, beat in beats.items()]
    verdicts.sort(key=lambda lane_verdict: lane_verdict[0] != LOOP)
    late = [(lane, verdict) for lane, verdict in verdicts if not verdict.ok]
    shown = late or verdicts
    reason = "; ".join(
        verdict.reason if lane == LOOP else f"{lane}: {verdict.reason}" for lane, verdict in shown
    )
    return Verdict(not late, reason)


def readiness(beat: Beat | None, poll: Poll | None, now: float, grace: float) -> Verdict:
    """Ready while alive and the last lease poll was answered (a busy worker polls again only
    when it prefetches its next batch: its last poll still stands meanwhile)."""
    return _answered(liveness(beat, now, grace), poll, now)


def _answered(alive: Verdict, poll: Poll | None, now: float) -> Verdict:
    if not alive.ok:
        return alive
    if poll is None:
        return Verdict(False, "no lease poll answered yet")
    if not poll.ok:
        return Verdict(False, f"the AI service did not answer the last lease poll: {poll.error}")
    return Verdict(True, f"last lease poll answered {now - poll.at:.0f}s ago")


class Pulse:
    """What each lane of the loop last did, and how the last lease poll went, for the probes."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self.beats: Mapping[str, Beat] = {}  # replaced whole, never edited: the probe reads one
        self.last_poll: Poll | None = None

    @property
    def last_beat(self) -> Beat | None:
        """The loop lane's last beat."""
        return self.beats.get(LOOP)

    def beat(self, doing: str, within: float, lane: str = LOOP) -> None:
        self.beats = {**self.beats, lane: Beat(self.clock(), doing, within)}

    def rest(self, lane: str) -> None:
        """The lane's stage has ended: it promises nothing more."""
        self.beats = {name: beat for name, beat in self.beats.items() if name != lane}

    def polled(self, ok: bool, error: str = "") -> None:
        self.last_poll = Poll(self.clock(), ok, error)

    def live(self) -> Verdict:
        return liveness_of_lanes(self.beats, self.clock(), self.grace)

    def ready(self) -> Verdict:
        return _answered(self.live(), self.last_poll, self.clock())
