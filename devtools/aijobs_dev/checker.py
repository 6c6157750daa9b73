"""The invariant checker (I1-I5) a fault campaign ends with: it reads every AIImageJob and every
service's records of it, and lists each violation with the job, the records and the faults that
touched it. Pure functions over what :func:`collect` gathered, so a report can be re-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aijobs.api.ai import Task
from aijobs.api.payment import Hold
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.storage import StoredObject
from aijobs.api.v1alpha1 import AIImageJobStatus
from aijobs.consistency import JobRecords, findings

__all__ = ["JobView", "Violation", "check"]


@dataclass
class JobView:
    name: str
    namespace: str
    uid: str
    account: str
    price: int
    status: dict[str, Any]
    holds: list[dict[str, Any]]
    objects: list[dict[str, Any]]
    tasks: list[dict[str, Any]]

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")


@dataclass
class Violation:
    invariant: str
    job: str
    detail: str
    records: dict[str, Any] = field(default_factory=dict)


def check(
    jobs: list[JobView],
    balances: dict[str, dict[str, int]],
    initial: dict[str, int],
    ledger: dict[str, Any],
    gone: list[JobView] | None = None,
) -> list[Violation]:
    """``gone``: jobs a user deleted (their records, no status): charged only if delivered before
    they went, and then with their result still there to fetch; otherwise nothing left."""
    out: list[Violation] = []
    delivered_cost: dict[str, int] = {}
    for job in gone or []:
        captured = [h for h in job.holds if h["state"] == "captured"]
        charged = sum(h["amount"] for h in captured)
        live = [o for o in job.objects if o["state"] != "deleted"]
        evidence: dict[str, Any] = {"holds": job.holds, "objects": job.objects, "tasks": job.tasks}
        where = f"{job.namespace}/{job.name} (deleted)"
        if any(h["state"] == "active" for h in job.holds):
            out.append(Violation("I3", where, "a hold is still active", evidence))
        if charged:
            delivered_cost[job.account] = delivered_cost.get(job.account, 0) + job.price
            if charged != job.price or len(captured) != 1:
                out.append(Violation("I1", where, f"charged {charged} (price {job.price})", evidence))
            if not any(o["kind"] == "result" for o in live):
                out.append(Violation("I1", where, "charged, but the result is gone", evidence))
        else:
            if live:
                out.append(Violation("I3", where, f"{len(live)} object(s) left", evidence))
            if any(t["state"] in ("scheduled", "running") and not t["cancelRequested"] for t in job.tasks):
                out.append(Violation("I3", where, "a task is still scheduled or running", evidence))
    for job in jobs:
        records = {"holds": job.holds, "objects": job.objects, "tasks": job.tasks, "phase": job.phase}

        def bad(invariant: str, detail: str, job: JobView = job, records: dict[str, Any] = records) -> None:
            out.append(Violation(invariant, f"{job.namespace}/{job.name}", detail, records))

        captured = [h for h in job.holds if h["state"] == "captured"]
        charged = sum(h["amount"] for h in captured)
        live = [o for o in job.objects if o["state"] != "deleted"]
        results = [o for o in live if o["kind"] == "result"]
        # I4: everything ended.
        if job.phase not in TERMINAL_PHASES:
            bad("I4", f"still {job.phase} after the grace period")
            continue
        # I1: charged the price once if delivered, else nothing.
        if job.phase == "Delivered":
            delivered_cost[job.account] = delivered_cost.get(job.account, 0) + job.price
            if charged != job.price or len(captured) != 1:
                bad(
                    "I1", f"delivered but charged {charged} over {len(captured)} captures (price {job.price})"
                )
            # I2: one result.
            if len(results) != 1:
                bad("I2", f"{len(results)} live results for one delivered job")
        elif charged:
            bad("I1", f"failed but charged {charged}")
        # I3: nothing left behind.
        active = [h for h in job.holds if h["state"] == "active"]
        if active:
            bad("I3", f"{len(active)} hold(s) still active")
        if job.phase == "Failed" and live:
            bad("I3", f"{len(live)} object(s) left by a failed job")
        if job.phase == "Delivered" and len(live) > 2:
            bad("I3", f"{len(live)} live objects for a delivered job (input + result expected)")
        running = [t for t in job.tasks if t["state"] in ("scheduled", "running")]
        if running:
            bad("I3", f"task(s) {', '.join(t['id'] for t in running)} still {running[0]['state']}")
        if len(job.tasks) > 1:
            bad("I2", f"{len(job.tasks)} tasks for one job")
        # I5: every service agrees with the saga log.
        told = JobRecords(
            [Hold.model_validate(h) for h in job.holds],
            [StoredObject.model_validate(o) for o in job.objects],
            Task.model_validate(job.tasks[0]) if job.tasks else None,
        )
        for finding in findings(AIImageJobStatus.model_validate(job.status), job.price, told):
            bad("I5", f"{finding.kind} ({finding.service}): {finding.detail}")
        if job.phase == "Delivered" and job.tasks and job.tasks[0]["state"] != "succeeded":
            bad("I5", f"delivered but the AI service says {job.tasks[0]['state']}")
    for account, start in initial.items():
        balance = balances[account]
        expected = start - delivered_cost.get(account, 0)
        if balance["available"] < 0 or balance["held"] < 0:
            out.append(Violation("I1", account, f"negative balance {balance}"))
        if balance["available"] != expected or balance["held"] != 0:
            out.append(
                Violation("I1", account, f"balance {balance}, expected {expected} available and 0 held")
            )
    if not ledger.get("consistent", False):
        out.append(Violation("I1", "ledger", f"the ledger does not balance: {ledger.get('problems')}"))
    return out
