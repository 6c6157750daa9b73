"""The saga's decisions: pure functions over a job's typed saga log.

Everything that decides what happens to a user's money lives here, and nothing here does I/O,
reads a clock or draws a random number. Two functions carry the whole saga:

    plan(job, now, policy)                   -> Action   what to do next, from the log alone
    settle(job, action, outcome, now, policy) -> Settled  the log after an action's outcome

The engine (:mod:`aijobs_operator.engine`) carries actions out against Kubernetes and the
services and feeds their outcomes back; the deterministic simulator runs the very same engine
against in-memory twins. Because a step's request is built only from the log, and every value it
sends (a hold's expiry, a link's lifetime, a key) is fixed there, a retry under one idempotency
key always sends the same request.

The rules, each one a branch below and a table of cases in ``tests/operator/test_core.py``:

- A job is **accepted** once (its spec is then frozen, from its first write on: a spec changed
  before that write is compensated, never run half-old); one whose hold would have to outlive
  Payment's limit is **refused** at once, before anything is charged.
- Forward steps run in order. An outcome that is **unknown** (timeout, reset, 5xx, 429, a key in
  progress) is retried with the same key no earlier than ``nextAttemptAt``, which the backoff
  fixes in the log, so the pace of retries does not depend on how often the job is woken.
- A **definite** failure (a refusal, or an exception no step expected) before the point of no
  return compensates in reverse order; so do the deadline passing, the retry limit and deletion.
- **Capture is written ahead**: its attempt is persisted before the call is made. From then on
  the job only goes forward (no deadline, retry limit or deletion compensates it) unless Payment
  answers a definite no (the hold can no longer be captured), which leaves the user uncharged.
- A job being deleted is compensated first, or, past capture, delivered first; the finalizer is
  let go only then.

The conditions say the same to tools that read them. kstatus (Flux's ``wait: true``, kpt) reads a
custom resource by ``Reconciling`` and ``Stalled`` only: the first of them that is True decides
(InProgress, Failed), neither True reads Current. So exactly one is True until the job ends:
``Reconciling`` while the saga works (running, retrying an unknown outcome, compensating),
``Stalled`` while a service says a definite no to a step the job cannot give up (a delivery past
the capture, an undo), and, for good, once the job has failed. A delivered job has neither.
``Complete``/``Failed`` are batch/v1 Job's, for ``kubectl wait --for=condition=...``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from aijobs.api.ai import JobTaskCounts, Task
from aijobs.api.rules import DEFAULT_BACKOFF, MAX_HOLD, TERMINAL_PHASES
from aijobs.api.v1alpha1 import (
    AIImageJobSpec,
    AIImageJobStatus,
    BatchStatus,
    Condition,
    JobResult,
    Phase,
    StepRecord,
)

__all__ = [
    "TERMINAL",
    "Accept",
    "Action",
    "Compensate",
    "Definite",
    "Done",
    "Ended",
    "Event",
    "Finish",
    "JobView",
    "LetGo",
    "Nothing",
    "Outcome",
    "Policy",
    "RunStep",
    "RunUndo",
    "Saga",
    "Settled",
    "Step",
    "Undo",
    "Unknown",
    "Wait",
    "Waiting",
    "backoff",
    "batch_charge",
    "batch_exceeded",
    "batch_stage",
    "hold_expiry",
    "idempotency_key",
    "iso",
    "parse",
    "progress_interval",
    "refuse_unreadable",
    "succeeded",
]

TERMINAL = tuple(Phase(p) for p in TERMINAL_PHASES)


def idempotency_key(uid: str, step: str) -> str:
    """One key per job and step (or compensation): a retry, a restart, a duplicate event reuse it."""
    return f"aij:{uid}:{step}"


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Policy:
    """What the operator's settings and the job's retry policy say, in one value."""

    max_attempts: int = DEFAULT_BACKOFF[0]
    initial_backoff: float = DEFAULT_BACKOFF[1]
    max_backoff: float = DEFAULT_BACKOFF[2]
    default_deadline: dt.timedelta = dt.timedelta(hours=1)
    hold_grace: dt.timedelta = dt.timedelta(hours=1)
    compensation_max_backoff: float = 60.0
    # A batch's default deadline: its size is not known at acceptance, and an hour is ~40,000
    # images at the worker's CPU pace, so a batch without a deadline gets a day.
    batch_default_deadline: dt.timedelta = dt.timedelta(days=1)

    def for_job(self, spec: AIImageJobSpec) -> Policy:
        retry = spec.retry_policy
        return Policy(
            max_attempts=retry.max_attempts,
            initial_backoff=float(retry.initial_backoff_seconds),
            max_backoff=float(retry.max_backoff_seconds),
            default_deadline=self.batch_default_deadline if spec.is_batch else self.default_deadline,
            hold_grace=self.hold_grace,
            compensation_max_backoff=self.compensation_max_backoff,
            batch_default_deadline=self.batch_default_deadline,
        )


@dataclass(frozen=True)
class JobView:
    """What the core sees of one job: its identity, its order (spec) and its saga log (status)."""

    uid: str
    namespace: str
    name: str
    generation: int
    created: dt.datetime
    deleting: bool
    spec: AIImageJobSpec
    status: AIImageJobStatus

    def with_status(self, status: AIImageJobStatus) -> JobView:
        return JobView(
            self.uid,
            self.namespace,
            self.name,
            self.generation,
            self.created,
            self.deleting,
            self.spec,
            status,
        )


# ---------------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class Ended:
    """What a batch's images came to, as its process step read them once every image had ended:
    the manifest (a JSON line per image), the counts it tells (with a sample of failures), and the
    result objects its lines name. Compact: ~340 bytes an image, not the parsed lines
    ~1.3 KB."""

    manifest: bytes
    final: BatchStatus
    named: frozenset[str]


@dataclass(frozen=True)
class Done:
    """The step did what it asks. What it learned travels here: ids for the log (``remote_ids``),
    the result, the AI task as the step last saw it (the engine's follower keeps it), and what a
    batch's images came to (the engine keeps it for the delivery)."""

    message: str
    remote_ids: dict[str, str] = field(default_factory=dict)
    result: JobResult | None = None
    reruns: int | None = None
    task: Task | None = None
    batch: BatchStatus | None = None  # a batch's counts as the step saw them
    ended: Ended | None = None


@dataclass(frozen=True)
class Waiting:
    """Not done yet, nothing wrong (a task queued, running, or waiting for its runAt; a cancelled
    task whose worker has not stopped yet; a batch's images still running, with its counts)."""

    reason: str
    message: str
    task: Task | None = None
    batch: BatchStatus | None = None


@dataclass(frozen=True)
class Definite:
    """A definite no: the service refused, or the step met something it did not expect."""

    reason: str
    message: str


@dataclass(frozen=True)
class Unknown:
    """The outcome is unknown (timeout, reset, 5xx, 429, key in progress): send it again."""

    message: str
    retry_after: float | None = None


Outcome = Done | Waiting | Definite | Unknown


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


# ----------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Accept:
    """Accept the job and go on. Not written by itself: every key is derived from the job's uid
    and every value sent from its spec and creation time, so a pass that dies before its first
    write replays the same calls; the acceptance reaches the API server with the pass's first
    write, and the spec is frozen from then on (see :func:`_plan` for a spec changed before)."""

    status: AIImageJobStatus
    events: tuple[Event, ...]
    persist: bool = False


@dataclass(frozen=True)
class Compensate:
    """Enter compensation (or, with ``phase`` Failed and nothing to undo, end at once)."""

    status: AIImageJobStatus
    events: tuple[Event, ...]
    persist: bool = False


@dataclass(frozen=True)
class Finish:
    status: AIImageJobStatus
    events: tuple[Event, ...]
    persist: bool = True


@dataclass(frozen=True)
class RunStep:
    """Call the step. ``status`` records the attempt; with ``write_ahead`` it is persisted first."""

    name: str
    status: AIImageJobStatus
    write_ahead: bool


@dataclass(frozen=True)
class RunUndo:
    name: str
    status: AIImageJobStatus


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until`` (or before the job's task changes, when None)."""

    until: dt.datetime | None


@dataclass(frozen=True)
class LetGo:
    """The job is being deleted and holds nothing: remove the finalizer."""


@dataclass(frozen=True)
class Nothing:
    """A finished job: nothing to do."""


Action = Accept | Compensate | Finish | RunStep | RunUndo | Wait | LetGo | Nothing
Write = Accept | Compensate | Finish


@dataclass(frozen=True)
class Settled:
    status: AIImageJobStatus
    events: tuple[Event, ...] = ()
    checkpoint: bool = False  # persist now, before anything else happens
    wait: Wait | None = None  # the pass ends here


# ------------------------------------------------------------------------------ the table
Ctx = TypeVar("Ctx")
StepFn = Callable[[Ctx], Awaitable[Done | Waiting]]


@dataclass(frozen=True)
class Undo(Generic[Ctx]):
    """A compensation: it undoes what its step may have left at a service, working from what the
    service holds for the job, so it is complete even when the step's answer was lost."""

    name: str
    do: StepFn[Ctx]


@dataclass(frozen=True)
class Step(Generic[Ctx]):
    """One step of the saga, everything about it in one place.

    ``condition`` is set True when it succeeds, ``reaches`` the phase it moves the job to.
    ``poll``: it asks "is it done yet?" rather than for something: asking is not an attempt.
    ``checkpoint``: its success is written to the API server at once (a result that exists must
    be remembered even if the operator dies in the next instant).
    ``write_ahead``: its attempt is written *before* the call: the point of no return. From then
    on the job only goes forward, unless this step is refused (then nothing was charged).
    ``irreversible``: past the point of no return: a refusal is retried, never compensated.
    ``undo``: what compensates it; compensations run in the reverse order of their steps.
    """

    name: str
    condition: str
    do: StepFn[Ctx]
    reaches: Phase | None = None
    undo: Undo[Ctx] | None = None
    poll: bool = False
    checkpoint: bool = False
    write_ahead: bool = False
    irreversible: bool = False


@dataclass(frozen=True)
class Saga(Generic[Ctx]):
    """The steps in forward order. Everything the rules below need to know of a step they read
    here: adding a step is one entry and its functions."""

    steps: tuple[Step[Ctx], ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps] + [u.name for u in self.undos]
        if len(set(names)) != len(names):
            raise ValueError(f"step and compensation names must be unique: {names}")
        if any(s.write_ahead and not s.irreversible for s in self.steps):
            raise ValueError("a written-ahead step is the point of no return: mark it irreversible")

    def step(self, name: str) -> Step[Ctx]:
        return next(s for s in self.steps if s.name == name)

    def undo(self, name: str) -> Undo[Ctx]:
        return next(u for u in self.undos if u.name == name)

    @property
    def undos(self) -> tuple[Undo[Ctx], ...]:
        """The compensations, last step's first: the task before the objects, the credits last."""
        return tuple(s.undo for s in reversed(self.steps) if s.undo is not None)

    @property
    def names(self) -> tuple[str, ...]:
        """Every step's and compensation's name (metrics label their series with these)."""
        return tuple(s.name for s in self.steps) + tuple(u.name for u in self.undos)

    def plan(self, job: JobView, now: dt.datetime, policy: Policy) -> Action:
        """What to do next with this job, decided from its log, the clock's reading and the policy."""
        return _plan(self, job, now, policy)

    def settle(
        self, job: JobView, action: RunStep | RunUndo, outcome: Outcome, now: dt.datetime, policy: Policy
    ) -> Settled:
        """The log after ``action`` (already recorded in ``job.status``) came back with ``outcome``."""
        if isinstance(action, RunUndo):
            return _settle_undo(self, job, action.name, outcome, now, policy)
        return _settle_step(self, job, self.step(action.name), outcome, now, policy)

    def committed_to_deliver(self, status: AIImageJobStatus) -> bool:
        """Once the point of no return was *attempted* (written ahead), its outcome may be a
        charge: the job only goes forward, unless the service said a definite no."""
        for step in self.steps:
            if step.write_ahead:
                rec = _find(status.steps, step.name)
                if rec is not None and rec.attempts > 0 and rec.state != "Failed":
                    return True
        return False

    def describe(self) -> str:
        """The table as Markdown, for the docs (``docs/saga.md`` is checked against it)."""
        rows = [
            "| # | step | sets | reaches | kind | compensated by |",
            "|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(self.steps, 1):
            kind = ", ".join(
                label
                for label, on in (
                    ("poll", s.poll),
                    ("checkpoint", s.checkpoint),
                    ("written ahead", s.write_ahead),
                    ("irreversible", s.irreversible),
                )
                if on
            )
            reaches = s.reaches.value if s.reaches is not None else "-"
            undo = s.undo.name if s.undo is not None else "-"
            rows.append(f"| {i} | `{s.name}` | {s.condition} | {reaches} | {kind or '-'} | {undo} |")
        return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- log helpers
def _copy(status: AIImageJobStatus) -> AIImageJobStatus:
    """A copy the caller may change: records and conditions are copied one level deep (the core
    replaces their dict and model fields whole, never edits them in place). Much cheaper than a
    deep copy, which matters to the simulator's millions of decisions."""
    new = status.model_copy()
    new.steps = [r.model_copy() for r in status.steps]
    new.compensations = [r.model_copy() for r in status.compensations]
    new.conditions = [c.model_copy() for c in status.conditions]
    return new


def _record(status: AIImageJobStatus, name: str, compensation: bool = False) -> StepRecord:
    records = status.compensations if compensation else status.steps
    for rec in records:
        if rec.name == name:
            return rec
    rec = StepRecord(name=name, state="Pending", attempts=0)
    records.append(rec)
    return rec


def _find(records: list[StepRecord], name: str) -> StepRecord | None:
    return next((r for r in records if r.name == name), None)


def succeeded(status: AIImageJobStatus, name: str, compensation: bool = False) -> bool:
    rec = _find(status.compensations if compensation else status.steps, name)
    return rec is not None and rec.state == "Succeeded"


def deadline_of(job: JobView, policy: Policy) -> dt.datetime:
    if job.status.deadline is not None:  # fixed in the log at acceptance
        return job.status.deadline
    if job.spec.deadline is not None:
        return job.spec.deadline
    start = job.spec.run_at or job.created
    return start + policy.default_deadline


def hold_expiry(status: AIImageJobStatus, policy: Policy) -> dt.datetime:
    """The hold's expiry: from the log only, so every retry sends the same request."""
    assert status.deadline is not None
    return status.deadline + policy.hold_grace


def set_condition(
    status: AIImageJobStatus, type_: str, value: str, reason: str, message: str, gen: int, now: dt.datetime
) -> None:
    """``lastTransitionTime`` moves only when the condition's status changes."""
    message = message[:4000]
    for cond in status.conditions:
        if cond.type == type_:
            if cond.status != value:
                cond.last_transition_time = now
            cond.status = value  # type: ignore[assignment]
            cond.reason, cond.message, cond.observed_generation = reason, message, gen
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=gen,
        )
    )


def _reconciling(status: AIImageJobStatus, reason: str, message: str, gen: int, now: dt.datetime) -> None:
    """kstatus reads InProgress: the saga is working on the job."""
    set_condition(status, "Reconciling", "True", reason, message, gen, now)
    set_condition(status, "Stalled", "False", reason, "", gen, now)


def _stalled(
    status: AIImageJobStatus, reason: str, message: str, cause: str, gen: int, now: dt.datetime
) -> None:
    """kstatus reads Failed: retrying alone is not expected to help, a person should look.
    Reconciling keeps ``cause`` as its reason (a compensation's cause names the failure)."""
    set_condition(status, "Stalled", "True", reason, message, gen, now)
    set_condition(status, "Reconciling", "False", cause, message, gen, now)


def _is_stalled(status: AIImageJobStatus) -> bool:
    return any(c.type == "Stalled" and c.status == "True" for c in status.conditions)


def backoff(uid: str, step: str, attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter in [50 %, 100 %]. The jitter is drawn from the job, step and
    attempt (a hash, not a random generator), so the same log always gives the same delay and
    jobs that failed together still spread out."""
    digest = hashlib.sha256(f"{uid}:{step}:{attempts}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return float(min(maximum, initial * 2.0 ** max(0, attempts - 1)) * (0.5 + 0.5 * fraction))


def _finish(
    status: AIImageJobStatus, gen: int, phase: Phase, reason: str, message: str, now: dt.datetime
) -> None:
    status.phase = phase
    status.completed_at = now
    status.message = message
    status.observed_generation = gen
    delivered = phase == Phase.DELIVERED
    set_condition(status, "Complete", "True" if delivered else "False", reason, message, gen, now)
    set_condition(status, "Failed", "False" if delivered else "True", reason, message, gen, now)
    set_condition(status, "Reconciling", "False", reason, "", gen, now)
    # A failure is final: Stalled stays True (kstatus: Failed), with the failure's reason.
    if delivered:
        set_condition(status, "Stalled", "False", reason, "", gen, now)
    else:
        set_condition(status, "Stalled", "True", reason, message, gen, now)


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------------- plan
def _plan(saga: Saga[Ctx], job: JobView, now: dt.datetime, policy: Policy) -> Action:
    status = job.status
    if status.phase is None:
        if job.deleting:
            # Nothing on record, but a pass may have called the services before its first write
            # (refused: the deletion itself changed the job, or the operator died): undo what they
            # hold for the job, which costs three reads when they hold nothing.
            return _compensate(job, now, "Deleted", "the job was deleted before its acceptance was written")
        return _accept(job, now, policy)
    if status.phase in TERMINAL:
        return LetGo() if job.deleting else Nothing()
    if status.phase == Phase.COMPENSATING:
        return _next_undo(saga, job, now, policy)
    committed = saga.committed_to_deliver(status)
    if job.deleting and not committed:
        return _compensate(job, now, "Deleted", "the job was deleted before delivery")
    if not committed and status.observed_generation not in (None, job.generation):
        # The spec changed between acceptance and the first write of the log (after which the
        # API server refuses any change): the calls made so far were for the spec before.
        return _compensate(
            job,
            now,
            "SpecChanged",
            f"the spec changed (generation {status.observed_generation} to {job.generation}) while the "
            "job was starting; what was done for the earlier spec is undone and nothing is charged: "
            "create a new job with the new spec",
        )
    deadline = deadline_of(job, policy)
    for step in saga.steps:
        name = step.name
        if succeeded(status, name):
            continue
        if not committed and now > deadline:
            return _compensate(
                job, now, "DeadlineExceeded", f"the deadline {iso(deadline)} passed before delivery"
            )
        rec = _find(status.steps, name)
        if rec is not None and rec.next_attempt_at is not None and now < rec.next_attempt_at:
            until = rec.next_attempt_at if committed else min(rec.next_attempt_at, deadline)
            return Wait(until)
        new = _copy(status)
        rec = _record(new, name)
        rec.key = rec.key or idempotency_key(job.uid, name)
        rec.started_at = rec.started_at or now
        rec.next_attempt_at = None
        if not step.poll:
            rec.attempts += 1
            rec.state = "Running"
        return RunStep(name, new, write_ahead=step.write_ahead)
    # Every step succeeded.
    new = _copy(status)
    if batch_exceeded(job.spec, new.batch):
        # What succeeded is delivered and charged; the job still failed its policy, and says so.
        assert new.batch is not None
        why = (
            f"{new.batch.failed} of {new.batch.total} images failed, more than maxFailedImages "
            f"({job.spec.max_failed_images}); the {new.batch.succeeded} that succeeded are delivered "
            f"and charged, {new.batch.cancelled} were cancelled"
        )
        _finish(new, job.generation, Phase.FAILED, "TooManyFailedImages", why, now)
        return Finish(new, (Event("Warning", "TooManyFailedImages", why),))
    _finish(new, job.generation, Phase.DELIVERED, "Delivered", new.message or "delivered", now)
    return Finish(new, ())


BatchStage = Literal["cancel-rest", "waiting-for-run-at", "running", "ended"]


def batch_stage(
    counts: JobTaskCounts, limit: int | None, run_at: dt.datetime | None, now: dt.datetime
) -> BatchStage:
    """Where a batch's images stand, from their counts: past ``maxFailedImages`` (``limit``)
    with images not yet run, those are to be cancelled; else running (or all waiting for their
    runAt); else every image has ended. The follower wakes a batch at once for the first and the
    last, and the process step acts on it."""
    if limit is not None and counts.failed > limit and counts.scheduled > 0:
        return "cancel-rest"
    if counts.scheduled + counts.running > 0:
        if counts.running == 0 and run_at is not None and run_at > now:
            return "waiting-for-run-at"
        return "running"
    return "ended"


def progress_interval(base: float, running: float) -> float:
    """How long a batch's progress waits before its next status write: ``base`` seconds for its
    first ten, then a tenth of the time it has been running. Writes then grow with the logarithm
    of a batch's duration (about 10 + 10.5 ln(T / 10 base): ~30 for half an hour at the default
    30 s, ~70 for a day), never with its number of images; the last one comes at once."""
    return max(base, running / 10)


def batch_charge(price: int, delivered: int, total: int) -> int:
    """What a batch's capture takes (I1 per image): the price of each image delivered, of the
    ``total`` held for; an image that failed or was cancelled costs nothing."""
    assert 0 <= delivered <= total
    return price * delivered


def batch_exceeded(spec: AIImageJobSpec, batch: BatchStatus | None) -> bool:
    """Whether a batch's failures went past its ``maxFailedImages`` (never, when unset)."""
    limit = spec.max_failed_images
    return batch is not None and limit is not None and batch.failed > limit


def _accept(job: JobView, now: dt.datetime, policy: Policy) -> Action:
    new = _copy(job.status)
    gen = job.generation
    deadline = deadline_of(job, policy)
    new.observed_generation = gen
    new.started_at = now
    new.deadline = deadline
    for type_ in ("Complete", "Failed"):
        set_condition(new, type_, "False", "InProgress", "", gen, now)
    if deadline + policy.hold_grace > now + MAX_HOLD:
        # Credits can't be held that long: refuse before anything is charged, say why.
        why = (
            f"the job would need its credits held until {iso(deadline + policy.hold_grace)}, beyond "
            f"Payment's {MAX_HOLD.days}-day limit; schedule it (runAt and deadline) within "
            f"{MAX_HOLD.days} days"
        )
        _finish(new, gen, Phase.FAILED, "BeyondHoldLife", why, now)
        return Finish(new, (Event("Warning", "BeyondHoldLife", why),))
    new.phase = Phase.PENDING
    new.message = "accepted; charging"
    _reconciling(new, "Accepted", "the saga is running", gen, now)
    return Accept(new, (Event("Normal", "Accepted", f"job accepted; deadline {iso(deadline)}"),))


def refuse_unreadable(generation: int, now: dt.datetime, why: str) -> AIImageJobStatus:
    """The log of a job whose spec can't be read: failed before anything was charged."""
    status = AIImageJobStatus(started_at=now)
    _finish(status, generation, Phase.FAILED, "InvalidSpec", why, now)
    return status


def _compensate(job: JobView, now: dt.datetime, reason: str, why: str) -> Compensate:
    new = _copy(job.status)
    new.phase = Phase.COMPENSATING
    new.message = why
    _reconciling(new, reason, why, job.generation, now)
    return Compensate(new, (Event("Warning", reason, f"compensating: {why}"),))


def _next_undo(saga: Saga[Ctx], job: JobView, now: dt.datetime, policy: Policy) -> Action:
    status = job.status
    for undo in saga.undos:
        name = undo.name
        if succeeded(status, name, compensation=True):
            continue
        rec = _find(status.compensations, name)
        if rec is not None and rec.next_attempt_at is not None and now < rec.next_attempt_at:
            return Wait(rec.next_attempt_at)
        new = _copy(status)
        rec = _record(new, name, compensation=True)
        rec.key = rec.key or idempotency_key(job.uid, name)
        rec.started_at = rec.started_at or now
        rec.next_attempt_at = None
        rec.attempts += 1
        rec.state = "Running"
        return RunUndo(name, new)
    new = _copy(status)
    gen = job.generation
    done = "; ".join(r.last_error or "" for r in new.compensations)
    set_condition(new, "Compensated", "True", "Compensated", done, gen, now)
    failure = new.message or "failed"
    _finish(new, gen, Phase.FAILED, _failure_reason(new), failure, now)
    return Finish(new, (Event("Warning", "Failed", f"job failed and was compensated: {failure}"),))


def _failure_reason(status: AIImageJobStatus) -> str:
    for cond in status.conditions:
        if cond.type == "Reconciling" and cond.reason not in (None, "Accepted", "Retrying"):
            return cond.reason
    return "Failed"


# ------------------------------------------------------------------------------------- settle
def _settle_step(
    saga: Saga[Ctx], job: JobView, step: Step[Ctx], outcome: Outcome, now: dt.datetime, policy: Policy
) -> Settled:
    new, gen, name = _copy(job.status), job.generation, step.name
    rec = _record(new, name)
    condition = step.condition
    if isinstance(outcome, Done):
        rec.state, rec.finished_at, rec.last_error = "Succeeded", now, None
        if step.poll:
            rec.attempts += 1
        rec.remote_ids = dict(outcome.remote_ids)
        if step.reaches is not None:
            new.phase = step.reaches
        if outcome.result is not None:
            new.result = outcome.result
        if outcome.reruns is not None:
            new.reruns = outcome.reruns
        if outcome.batch is not None:
            new.batch = outcome.batch
        new.message = outcome.message
        set_condition(new, condition, "True", "Done", outcome.message, gen, now)
        if _is_stalled(new):  # a refused delivery went through at last
            _reconciling(new, "Accepted", "the saga is running", gen, now)
        return Settled(new, (Event("Normal", condition, outcome.message),), checkpoint=step.checkpoint)
    if isinstance(outcome, Waiting):
        deadline = deadline_of(job, policy)
        new.message = outcome.message
        if outcome.batch is not None:
            new.batch = outcome.batch
        set_condition(new, condition, "False", outcome.reason, outcome.message, gen, now)
        return Settled(new, wait=Wait(None if saga.committed_to_deliver(new) else deadline))
    if isinstance(outcome, Definite):
        rec.last_error = outcome.message
        if step.irreversible and not step.write_ahead:
            # Past the point of no return nothing is undone: a refused delivery is retried, and
            # said so. (The written-ahead step itself refused means nothing was charged.)
            return _retry(job, new, rec, name, outcome.message, None, now, policy, stalled=outcome.reason)
        rec.state, rec.finished_at = "Failed", now
        new.phase = Phase.COMPENSATING
        new.message = outcome.message
        _reconciling(new, outcome.reason, outcome.message, gen, now)
        return Settled(new, (Event("Warning", outcome.reason, f"compensating: {outcome.message}"),))
    # Unknown: the same request again, later.
    rec.last_error = outcome.message
    if not step.irreversible and rec.attempts >= policy.max_attempts:
        why = f"{name} gave up after {rec.attempts} attempts: {outcome.message}"
        new.phase = Phase.COMPENSATING
        new.message = why
        _reconciling(new, "RetriesExhausted", why, gen, now)
        return Settled(new, (Event("Warning", "RetriesExhausted", f"compensating: {why}"),))
    return _retry(job, new, rec, name, outcome.message, outcome.retry_after, now, policy)


def _retry(
    job: JobView,
    new: AIImageJobStatus,
    rec: StepRecord,
    name: str,
    error: str,
    retry_after: float | None,
    now: dt.datetime,
    policy: Policy,
    stalled: str | None = None,
) -> Settled:
    gen = job.generation
    delay = max(
        backoff(job.uid, name, rec.attempts, policy.initial_backoff, policy.max_backoff), retry_after or 0.0
    )
    rec.next_attempt_at = now + dt.timedelta(seconds=delay)
    message = (
        f"{name}: attempt {rec.attempts} had an unknown outcome ({error}); retrying in {delay:.0f}s "
        "with the same key"
        if stalled is None
        else f"{name} was refused ({error}); past the capture the job can only go forward: "
        f"retrying in {delay:.0f}s"
    )
    if stalled is None:
        _reconciling(new, "Retrying", message, gen, now)
    else:
        _stalled(new, stalled, message, stalled, gen, now)
    new.message = f"{name} retrying: {error}"
    return Settled(new, wait=Wait(rec.next_attempt_at))


def _settle_undo(
    saga: Saga[Ctx], job: JobView, name: str, outcome: Outcome, now: dt.datetime, policy: Policy
) -> Settled:
    new, gen = _copy(job.status), job.generation
    rec = _record(new, name, compensation=True)
    cause = _failure_reason(new)
    if isinstance(outcome, Done):
        rec.state, rec.finished_at, rec.last_error = "Succeeded", now, outcome.message
        if _is_stalled(new):  # a refused undo went through at last
            _reconciling(new, cause, new.message or "compensating", gen, now)
        return Settled(new)
    if isinstance(outcome, Waiting):  # nothing wrong, not yet (a cancelled task still stopping)
        rec.last_error = None
        delay = backoff(job.uid, name, rec.attempts, 1.0, policy.compensation_max_backoff)
        rec.next_attempt_at = now + dt.timedelta(seconds=delay)
        _reconciling(new, cause, f"{name}: {outcome.message}", gen, now)
        return Settled(new, wait=Wait(rec.next_attempt_at))
    # Anything else is retried: a refund is delayed, never skipped.
    message = outcome.message
    rec.last_error = message
    delay = backoff(job.uid, name, rec.attempts, 1.0, policy.compensation_max_backoff)
    if isinstance(outcome, Unknown) and outcome.retry_after:
        delay = max(delay, outcome.retry_after)
    rec.next_attempt_at = now + dt.timedelta(seconds=delay)
    why = f"{name}: {message}; retrying in {delay:.0f}s (a refund is delayed, never skipped)"
    if isinstance(outcome, Unknown):  # the service may answer next time: still compensating
        _reconciling(new, cause, why, gen, now)
    else:  # a definite no to an undo: the money waits for a person to look
        _stalled(new, "CompensationRefused", why, cause, gen, now)
    return Settled(new, wait=Wait(rec.next_attempt_at))
