"""The operator's probes: is it doing its part, leader or standby?

**Liveness** (``/healthz``): the Lease loop goes round. A standby tries the Lease every few
seconds, the leader renews it every third of its duration; each round that ends (answered or
not) is recorded. No round for twice the Lease's duration means the process is stuck (its event
loop blocked, a call hung): a restart loses nothing, since a leader that does not renew has lost
its Lease anyway, and it ends a process that could wake up and act without the Lease.

**Readiness** (``/readyz``): the last Lease round was answered by the API server, and

- the leader's watches of AIImageJobs and CreditAccounts are heard from: each delivered its
  initial listing, and since then an event or a bookmark within the silence bound (the API
  server sends a bookmark about every minute; kopf reconnects a stream silent for its
  ``inactivity_timeout``, so two such windows with nothing is a watch that no longer works);
- a standby is Ready: it is what it should be, a replica waiting to lead. The operator takes no
  Service traffic (its Service exists for metrics), so readiness gates no requests; what it
  gates is the Deployment's rollout and the PodDisruptionBudget. A rollout of two replicas with
  ``maxUnavailable: 0`` (25 % of 2, rounded down) waits for each new pod to be Ready before it
  removes an old one: new pods start as standbys while the old leader holds the Lease, so an
  unready standby would stall every rollout. And the PDB (``minAvailable: 1``) counts Ready
  pods: with standbys unready, the leader's node could never be drained.

The verdicts are pure functions over what :class:`Vitals` recorded and the time now.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aijobs.health import Verdict

__all__ = ["LeaseRound", "Vitals", "liveness", "readiness", "tap_watch_streams"]

Role = Literal["leader", "standby"]


@dataclass(frozen=True)
class LeaseRound:
    at: float  # monotonic seconds
    role: Role  # what this replica was after the round
    answered: bool  # the API server answered (held by us, or by another replica)
    error: str = ""


def liveness(last: LeaseRound | None, now: float, lease_seconds: float) -> Verdict:
    if last is None:
        return Verdict(False, "starting: no Lease round yet")
    bound = 2 * lease_seconds
    if now - last.at > bound:
        return Verdict(False, f"stuck: no Lease round for {now - last.at:.0f}s (bound {bound:.0f}s)")
    return Verdict(True, f"{last.role}: last Lease round {now - last.at:.0f}s ago")


def readiness(
    last: LeaseRound | None,
    heard: Mapping[str, float],
    watched: Collection[str],
    now: float,
    lease_seconds: float,
    silence: float,
) -> Verdict:
    alive = liveness(last, now, lease_seconds)
    if not alive.ok or last is None:
        return alive
    if not last.answered:
        return Verdict(False, f"the API server did not answer the last Lease round: {last.error}")
    if last.role == "standby":
        return Verdict(True, "standing by: another replica holds the Lease")
    for resource in sorted(watched):
        at = heard.get(resource)
        if at is None:
            return Verdict(False, f"leading, but the watch of {resource} has not listed yet")
        if now - at > silence:
            return Verdict(
                False,
                f"leading, but the watch of {resource} is silent for {now - at:.0f}s (bound {silence:.0f}s)",
            )
    return Verdict(True, "leading; watches of " + ", ".join(sorted(watched)) + " heard from")


class Vitals:
    """What the Lease loop and the watches last did, for the probes."""

    def __init__(
        self,
        lease_seconds: float,
        watched: Collection[str],
        silence: float = 140.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.watched = frozenset(watched)
        self.silence = silence  # set from kopf's inactivity timeout once it starts
        self.clock = clock
        self.last_round: LeaseRound | None = None
        self.heard: dict[str, float] = {}

    def lease_round(self, role: Role, answered: bool, error: str = "") -> None:
        self.last_round = LeaseRound(self.clock(), role, answered, error)

    def watch_heard(self, resource: str) -> None:
        self.heard[resource] = self.clock()

    def live(self) -> Verdict:
        return liveness(self.last_round, self.clock(), self.lease_seconds)

    def ready(self) -> Verdict:
        return readiness(
            self.last_round, dict(self.heard), self.watched, self.clock(), self.lease_seconds, self.silence
        )


def tap_watch_streams(vitals: Vitals, watching: Any = None) -> None:
    """Record each thing a kopf watch stream delivers: an object of the initial listing, the end
    of that listing, an event, a bookmark. kopf hands bookmarks to no handler, so this wraps the
    stream itself: its ``infinite_watch``, which kopf's queueing looks up on the module at each
    start (kopf is pinned to a minor version in pyproject.toml for this)."""
    if watching is None:
        from kopf._cogs.clients import watching
    original = watching.infinite_watch
    if getattr(original, "aijobs_tapped", False):
        return

    async def tapped(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for event in original(resource=resource, **kwargs):
            vitals.watch_heard(resource.plural)
            yield event

    tapped.aijobs_tapped = True  # type: ignore[attr-defined]
    watching.infinite_watch = tapped
