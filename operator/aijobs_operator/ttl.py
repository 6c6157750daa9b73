"""Finished jobs go away on time: ``spec.ttlSecondsAfterFinished`` (batch/v1 Job's field, with the
operator's default for jobs that do not say) deletes a Delivered or Failed job that long after it
finished. Its history stays where it belongs: the job's record in Main API, its money in Payment's
ledger. Deleting a finished job lets the finalizer go as for any deletion (the saga has nothing
left to undo), so the TTL needs no step of its own in the saga.

:func:`due` is the rule, pure over :class:`Finished` views of the reconciler's cache;
:class:`TtlCollector` is the loop that reads the cache and deletes through the
:class:`~aijobs_operator.kube.KubeWriter`, with the job's uid as a precondition so that a job
re-created under the same name is never deleted for its predecessor. No Event is posted: the
deletion itself is what ``kubectl get`` shows, and every API write counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aijobs.api.rules import TERMINAL_PHASES
from aijobs_operator.kube import ApiException, KubeWriter

__all__ = ["Finished", "TtlCollector", "due", "expires_at", "finished"]

log = logging.getLogger("aijobs.operator.ttl")


@dataclass(frozen=True)
class Finished:
    """What the TTL rule reads of a finished job."""

    namespace: str
    name: str
    uid: str
    finished_at: dt.datetime
    ttl_seconds: int | None  # the job's own spec.ttlSecondsAfterFinished; None: not set


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def finished(body: dict[str, Any]) -> Finished | None:
    """The job as the TTL sees it, or None while it is not finished (or is being deleted already).
    It finished at ``status.completedAt``; a log without one (written by hand, or by an older
    operator) finished when its ``Complete`` or ``Failed`` condition last turned True."""
    meta = body["metadata"]
    status = body.get("status") or {}
    if status.get("phase") not in TERMINAL_PHASES or meta.get("deletionTimestamp"):
        return None
    at = _time(status.get("completedAt"))
    if at is None:
        turned = [
            _time(c.get("lastTransitionTime"))
            for c in status.get("conditions") or []
            if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        ]
        at = max((t for t in turned if t is not None), default=None)
    if at is None:
        return None  # finished, but nobody can say when: kept, as with no TTL
    ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
    return Finished(meta["namespace"], meta["name"], meta["uid"], at, ttl if isinstance(ttl, int) else None)


def expires_at(job: Finished, default_ttl: int | None) -> dt.datetime | None:
    """When the job may be deleted: its own TTL wins over the operator's default; None: never."""
    ttl = job.ttl_seconds if job.ttl_seconds is not None else default_ttl
    return None if ttl is None else job.finished_at + dt.timedelta(seconds=ttl)


def due(jobs: Iterable[Finished], default_ttl: int | None, now: dt.datetime) -> list[Finished]:
    """The finished jobs whose TTL is up at ``now``, the longest overdue first."""
    ready = [(at, job) for job in jobs if (at := expires_at(job, default_ttl)) is not None and at <= now]
    return [job for _, job in sorted(ready, key=lambda pair: (pair[0], pair[1].namespace, pair[1].name))]


class TtlCollector:
    """Deletes the finished jobs of the reconciler's cache whose TTL is up, every ``interval``.

    ``ready`` (when an auditor runs) holds a job back until the auditor has judged it, so that its
    one audit comes before its deletion, and keeps one the auditor left for a person."""

    def __init__(
        self,
        kube: KubeWriter,
        jobs: Callable[[], Iterable[dict[str, Any]]],
        default_ttl: int | None,
        clock: Callable[[], dt.datetime],
        interval: float,
        ready: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> None:
        self.kube = kube
        self.jobs = jobs
        self.default_ttl = default_ttl
        self.clock = clock
        self.interval = interval
        self.ready = ready

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.collect()

    async def collect(self) -> list[Finished]:
        """One round: delete each due job (a job the API server does not delete now is tried again
        next round). Returns the jobs this round deleted."""
        bodies = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in list(self.jobs())}
        views = [view for body in bodies.values() if (view := finished(body)) is not None]
        deleted: list[Finished] = []
        for job in due(views, self.default_ttl, self.clock()):
            if not self.ready(bodies[(job.namespace, job.name)]):
                continue
            try:
                if await self.kube.delete(job.namespace, job.name, job.uid):
                    deleted.append(job)
                    log.info(
                        "deleted %s/%s: finished %s, its TTL is up", job.namespace, job.name, job.finished_at
                    )
            except ApiException as exc:
                log.warning("TTL deletion of %s/%s failed: %s", job.namespace, job.name, exc.status)
        return deleted
