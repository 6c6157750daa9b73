"""Does every service's record of a job agree with its saga log? (Invariant I5.)

A pure function over typed data: the job's saga log (:class:`AIImageJobStatus`) and what Payment,
Storage and AI hold for it, read as their wire models (:mod:`aijobs.api`).
Main API's admin view shows its findings; the auditor repairs what a finding's ``repair`` names;
the fault campaign's checker counts them. Each finding is justified by the saga log alone: a
repair never moves money on a guess.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from aijobs.api.ai import JobTaskCounts, Task, TaskCounts, TaskCountsQuery, TaskList, TaskQuery
from aijobs.api.payment import Charges, Hold
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.storage import JobObjects, StoredObject
from aijobs.api.v1alpha1 import AIImageJobStatus

__all__ = ["FINDING_KINDS", "Finding", "JobRecords", "fetch_records", "findings"]

TERMINAL = TERMINAL_PHASES
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class JobRecords:
    """What each service says about one job, from their auditor endpoints."""

    holds: list[Hold]  # Payment /v1/jobs/{uid}/charges -> holds
    objects: list[StoredObject]  # Storage /v1/jobs/{uid}/objects -> items, deleted ones included
    task: Task | None  # AI's task of the job, if any
    charges: Charges | None = None  # Payment's whole answer (with its ledger entries), if read
    counts: JobTaskCounts | None = None  # a batch job's tasks, counted (its tasks are not read)


class Source(Protocol):
    """A service to read from (:class:`aijobs.wire.client.ServiceClient` is one)."""

    async def fetch(self, into: type[M], method: str, path: str, **kwargs: Any) -> M: ...


async def fetch_records(
    payment: Source, storage: Source, ai: Source, uid: str, batch: bool = False
) -> JobRecords:
    """What Payment, Storage and AI hold for one job: one read each. The auditor and Main API's
    admin view both judge a job from this. A batch's tasks are counted, not read (up to
    100,000 of them)."""
    charges = await payment.fetch(Charges, "GET", f"/v1/jobs/{uid}/charges")
    stored = await storage.fetch(JobObjects, "GET", f"/v1/jobs/{uid}/objects")
    if batch:
        query = TaskCountsQuery(job_ids=[uid]).wire()
        counted = await ai.fetch(TaskCounts, "POST", "/v1/tasks/counts", json=query)
        return JobRecords(charges.holds, stored.items, None, charges, counted.items[0])
    query = TaskQuery(job_ids=[uid]).wire()
    tasks = await ai.fetch(TaskList, "POST", "/v1/tasks/query", json=query)
    return JobRecords(charges.holds, stored.items, tasks.items[0] if tasks.items else None, charges)


# Every kind of finding (stable names: dashboards and alerts select on them).
FINDING_KINDS = (
    "double-charge",
    "missing-capture",
    "stray-hold",
    "missing-charge",
    "missing-result",
    "orphan-object",
    "task-disagrees",
    "charged-for-failure",
    "orphan-task",
    "gone-job-leftover",  # what a request that committed after its job was gone left behind
)


@dataclass(frozen=True)
class Finding:
    kind: str  # one of FINDING_KINDS
    service: str
    detail: str
    # What would put it right, if that is safe to decide from the saga log alone:
    # "release-hold:<id>", "capture-hold:<id>", "delete-object:<id>", "cancel-task:<id>", or None.
    repair: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}: add it to FINDING_KINDS")


def gone_job_leftovers(records: JobRecords, tasks: JobTaskCounts) -> list[Finding]:
    """What to undo for a job that is gone from Kubernetes while Payment still holds credits for
    it (a request that committed after its compensation looked, or after its finalizer went, or
    a job that finished and went after the holds were read). ``tasks`` are its tasks' counts
    after they were asked to stop.

    A job none of whose holds was captured delivered nothing and was charged nothing: everything
    it left goes, as compensation would have done. A job with a captured hold was charged: the
    saga captures only for a result it then delivers (its finalizer delivers before it lets the
    job go), so its objects are what the user paid for and stay, and only a hold still active
    beside the captured one is released. Without its saga log the auditor cannot tell which of
    them was delivered: an extra result such a job kept (one whose delete failed before the job
    went) stays with it. The holds are released last, once no task runs and no object is
    left to delete: an active hold is the mark that the clean-up is not finished, so a pass that
    stops half way is taken up by the next one."""
    if tasks.running:
        return []  # a worker may still store a result: wait for it to stop
    charged = any(h.state == "captured" for h in records.holds)
    live = [] if charged else sorted(o.id for o in records.objects if o.state != "deleted")
    if live:  # one call for all of them (a batch's may be many), keyed by the set it deletes
        digest = hashlib.sha256(",".join(live).encode()).hexdigest()[:16]
        shown = ", ".join(live[:3]) + (f" and {len(live) - 3} more" if len(live) > 3 else "")
        return [
            Finding(
                "gone-job-leftover",
                "storage",
                f"{len(live)} object(s) of a job that is gone: {shown}",
                f"delete-job-objects:{tasks.job_id}/{digest}",
            )
        ]
    return [
        Finding(
            "gone-job-leftover",
            "payment",
            f"hold {h.id} of {h.amount} credits of a job that is gone",
            f"release-hold:{h.id}",
        )
        for h in records.holds
        if h.state == "active"
    ]


def findings(status: AIImageJobStatus, price: int, records: JobRecords) -> list[Finding]:
    phase = status.phase
    if phase not in TERMINAL:
        return []  # in flight: the saga itself is still converging
    if (
        status.batch is not None or records.counts is not None
    ):  # a batch (maybe failed before its set was frozen)
        return _batch_findings(status, price, records)
    found: list[Finding] = []
    captured = [h for h in records.holds if h.state == "captured"]
    active = [h for h in records.holds if h.state == "active"]
    live = [o for o in records.objects if o.state != "deleted"]
    result_id = status.result.object_id if status.result is not None else None
    task = records.task

    if phase == "Delivered":
        charged = sum(h.amount for h in captured)
        if len(captured) > 1 or charged > price:
            found.append(
                Finding(
                    "double-charge",
                    "payment",
                    f"charged {charged} over {len(captured)} holds, price {price}",
                    None,
                )
            )
        # Money moves only on evidence the services hold, never on the phase alone: a capture is
        # repaired only when AI says the task succeeded and Storage holds its committed result.
        evidence = (
            task is not None
            and task.state == "succeeded"
            and any(o.id == task.result_object_id and o.state == "committed" for o in records.objects)
        )
        # One hold is captured, never more: the oldest one for the price (the saga's own), listed
        # first so that the others are released only once it is (the auditor stops at a repair
        # that fails).
        fitting = [h for h in active if h.amount == price] if evidence and not captured else []
        chosen = min(fitting, key=lambda h: h.created_at).id if fitting else None
        for hold in sorted(active, key=lambda h: h.id != chosen):
            still = f"hold {hold.id} ({hold.amount}) is still active"
            if captured:
                found.append(Finding("stray-hold", "payment", still, f"release-hold:{hold.id}"))
            elif hold.id == chosen:
                found.append(Finding("missing-capture", "payment", still, f"capture-hold:{hold.id}"))
            elif chosen is not None:
                found.append(
                    Finding(
                        "stray-hold", "payment", f"{still}; {chosen} is captured", f"release-hold:{hold.id}"
                    )
                )
            else:
                why = "no succeeded task with a committed result" if not evidence else "not for the price"
                found.append(Finding("missing-capture", "payment", f"{still}; {why}", None))
        if not captured and not active:
            found.append(Finding("missing-charge", "payment", "delivered, but no hold was captured", None))
        if result_id and not any(o.id == result_id and o.state == "committed" for o in records.objects):
            found.append(
                Finding("missing-result", "storage", f"result {result_id} is not a committed object", None)
            )
        for obj in live:
            if obj.kind == "result" and obj.id != result_id:
                found.append(
                    Finding(
                        "orphan-object",
                        "storage",
                        f"extra result object {obj.id}",
                        f"delete-object:{obj.id}",
                    )
                )
        if task is not None and task.state != "succeeded":
            found.append(
                Finding("task-disagrees", "ai", f"task {task.id} is {task.state}, job is Delivered", None)
            )
    else:  # Failed: nothing may be charged, held, kept or left running
        for hold in captured:
            found.append(
                Finding(
                    "charged-for-failure",
                    "payment",
                    f"hold {hold.id} ({hold.amount}) was captured but the job failed",
                    None,
                )
            )
        for hold in active:
            found.append(
                Finding(
                    "stray-hold",
                    "payment",
                    f"hold {hold.id} ({hold.amount}) still active",
                    f"release-hold:{hold.id}",
                )
            )
        for obj in live:
            found.append(
                Finding(
                    "orphan-object",
                    "storage",
                    f"object {obj.id} ({obj.kind}) is {obj.state}",
                    f"delete-object:{obj.id}",
                )
            )
        if task is not None and task.state in ("scheduled", "running") and not task.cancel_requested:
            found.append(
                Finding("orphan-task", "ai", f"task {task.id} is {task.state}", f"cancel-task:{task.id}")
            )
    return _releases_last(found)


def _releases_last(found: list[Finding]) -> list[Finding]:
    """The findings in the order their repairs run, releases of holds last (the others' order
    kept): the auditor stops at a repair that fails, and an active hold is what brings a job
    back to it, even once the job is gone from Kubernetes (:func:`gone_job_leftovers`, for a job
    that was not charged). Released first, a failed object delete after it would leave the
    object to no one once its job is deleted. The price: while Storage or AI cannot delete or
    cancel, a failed job's credits stay held, until they can (the next passes) or the hold
    expires by itself."""
    return sorted(found, key=lambda f: (f.repair or "").startswith("release-hold:"))


def _batch_findings(status: AIImageJobStatus, price: int, records: JobRecords) -> list[Finding]:
    """A finished batch: charged exactly ``price x succeeded`` if its manifest was delivered (a
    batch past its maxFailedImages is delivered too, and ends Failed), nothing otherwise; no hold
    left active; no object left but its results and manifest when delivered, none when not; no
    task still to run. A missing or extra charge is reported, never settled on a guess: the
    amount a partial capture takes is the log's alone to say."""
    succeeded = status.batch.succeeded if status.batch is not None else 0
    found: list[Finding] = []
    delivered = status.result is not None and status.result.object_id is not None
    expected = price * succeeded if delivered else 0
    captured = [h for h in records.holds if h.state == "captured"]
    active = [h for h in records.holds if h.state == "active"]
    charged = sum(h.captured_amount for h in captured)
    if charged > expected or len(captured) > 1:
        kind = "double-charge" if delivered else "charged-for-failure"
        detail = f"charged {charged} over {len(captured)} holds, {expected} expected ({succeeded} images)"
        found.append(Finding(kind, "payment", detail, None))
    for hold in active:
        still = f"hold {hold.id} ({hold.amount}) is still active"
        if captured or expected == 0:
            found.append(Finding("stray-hold", "payment", still, f"release-hold:{hold.id}"))
        else:
            found.append(Finding("missing-capture", "payment", f"{still}; {expected} to capture", None))
    if delivered and charged < expected and not active:
        found.append(Finding("missing-charge", "payment", f"charged {charged}, {expected} expected", None))
    live = [o for o in records.objects if o.state != "deleted"]
    manifest = status.result.object_id if delivered and status.result is not None else None
    if manifest is not None and not any(o.id == manifest and o.state == "committed" for o in live):
        found.append(
            Finding("missing-result", "storage", f"manifest {manifest} is not a committed object", None)
        )
    if not delivered:
        for obj in live:
            found.append(
                Finding(
                    "orphan-object",
                    "storage",
                    f"object {obj.id} ({obj.kind}) is {obj.state}",
                    f"delete-object:{obj.id}",
                )
            )
    else:
        results = sum(1 for o in live if o.kind == "result")
        if results > succeeded:
            found.append(
                Finding(
                    "orphan-object",
                    "storage",
                    f"{results} results kept for {succeeded} images",
                    None,
                )
            )
    counts = records.counts
    if counts is not None and counts.scheduled + counts.running > 0:
        found.append(
            Finding(
                "orphan-task",
                "ai",
                f"{counts.scheduled} tasks scheduled, {counts.running} running",
                # What was seen names the repair (its key): a retry replays it, tasks that
                # appear later get a repair of their own.
                f"cancel-job-tasks:{counts.job_id}/{counts.total}/{counts.scheduled + counts.running}",
            )
        )
    return _releases_last(found)
