"""How much an account may submit: a rate, and a bound on its jobs in flight.

Main API refuses a submission over either with 429 and a Retry-After, before anything is stored.

The rate is a token bucket per account (pure, clock passed in) in the replica's memory: with N
replicas an account may submit up to N times the rate.

The jobs in flight hold across replicas and concurrent submissions. Counting the account's
AIImageJobs is not enough: a submission is admitted, uploads its image (seconds, for megabytes)
and only then creates its job, so every submission admitted in that window saw the same count.
So admission reserves a *slot* in Main's database, in a transaction serialized per account, and
counts the jobs listed that have not ended plus the slots whose job is not listed yet (the pure
:func:`admits`). The submission releases its slot once its job exists (the listing counts it
from then on) or once it is refused. A slot older than its bound was left by a replica that died
mid-submission: it stops counting and is deleted.

Inside that transaction the slots are read *before* the jobs are listed. A slot released
between the two reads was released after its job was created, so the listing (a quorum read)
shows the job; in the other order, a job created and released between the reads would be seen
by neither.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from aijobs.api.rules import TERMINAL_PHASES
from aijobs_services.kit.db import is_postgres
from aijobs_services.main.models import SubmissionSlot

__all__ = ["AtLimit", "Slot", "SubmissionLimiter", "SubmissionSlots", "admits", "jobs_in_flight"]

Listing = Callable[[], Mapping[str, str | None]]  # the account's jobs: name -> phase (None: new)


@dataclass
class SubmissionLimiter:
    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # account -> (tokens, at)

    def take(self, account: str) -> float | None:
        """Take one submission for ``account``: None if allowed, else the seconds to wait."""
        now = self.clock()
        tokens, at = self._buckets.get(account, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_minute / 60.0)
        if tokens >= 1.0:
            self._buckets[account] = (tokens - 1.0, now)
            return None
        self._buckets[account] = (tokens, now)
        return (1.0 - tokens) * 60.0 / self.per_minute


def jobs_in_flight(listed: Mapping[str, str | None], reserved: Collection[str]) -> int:
    """Jobs listed that have not ended, plus jobs reserved and not listed yet: each job once."""
    running = sum(1 for phase in listed.values() if phase not in TERMINAL_PHASES)
    return running + len(set(reserved).difference(listed))


def admits(name: str, listed: Mapping[str, str | None], reserved: Collection[str], limit: int) -> bool:
    """A new job under the limit; and always a job that exists or is being submitted already (a
    retry with the same Idempotency-Key adds no job, so it is never refused)."""
    return name in listed or name in reserved or jobs_in_flight(listed, reserved) < limit


class AtLimit(Exception):
    """The account has as many jobs in flight as it may."""

    def __init__(self, in_flight: int) -> None:
        super().__init__(f"{in_flight} jobs in flight")
        self.in_flight = in_flight


@dataclass(frozen=True)
class Slot:
    id: str
    account: str
    job_name: str


@dataclass(frozen=True)
class SubmissionSlots:
    """The slots of Main's database; ``bound``: how long a slot counts before its job exists."""

    sessions: sessionmaker[Session]
    bound: dt.timedelta

    def reserve(self, account: str, job_name: str, limit: int, listing: Listing, now: dt.datetime) -> Slot:
        """A slot for ``job_name``, or :class:`AtLimit`; ``listing`` is called inside the
        transaction (what it raises rolls it back)."""
        with self.sessions() as session, session.begin():
            _one_admission_at_a_time(session, account)
            session.execute(
                sa.delete(SubmissionSlot).where(
                    SubmissionSlot.account == account, SubmissionSlot.reserved_at < now - self.bound
                )
            )
            reserved = set(
                session.scalars(sa.select(SubmissionSlot.job_name).where(SubmissionSlot.account == account))
            )
            listed = listing()  # after the slots were read: see the module's docstring
            if not admits(job_name, listed, reserved, limit):
                raise AtLimit(jobs_in_flight(listed, reserved))
            slot = Slot(uuid.uuid4().hex, account, job_name)
            session.add(SubmissionSlot(id=slot.id, account=account, job_name=job_name, reserved_at=now))
        return slot

    def release(self, slot: Slot) -> None:
        with self.sessions() as session, session.begin():
            session.execute(sa.delete(SubmissionSlot).where(SubmissionSlot.id == slot.id))


def _one_admission_at_a_time(session: Session, account: str) -> None:
    """Until the transaction ends, no other admission of ``account`` runs. PostgreSQL: a
    transaction-scoped advisory lock on the account (no row to lock exists before its first
    slot). SQLite: the write lock every transaction takes at BEGIN (``kit.db``) already is one."""
    if is_postgres(session):
        key = sa.func.hashtextextended(f"submission-slots:{account}", 0)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
