"""I1-I5 after a simulated schedule, judged from what the twins hold — not from the operator's
own account of it (a status that says Delivered proves nothing; a delivery Main API recorded of a
result Storage still holds does)."""

from __future__ import annotations

from dataclasses import dataclass

from aijobs.api.rules import TERMINAL_PHASES
from aijobs_dev.simulation.world import World

__all__ = ["Violation", "check"]


@dataclass(frozen=True)
class Violation:
    invariant: str
    job: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} {self.job}: {self.detail}"


def check(world: World) -> list[Violation]:
    found: list[Violation] = []
    for job in world.jobs:
        holds = [h for h in world.payment.holds.values() if h.job_id == job.uid]
        charged = sum(h.amount for h in holds if h.state == "captured")
        results = [
            o
            for o in world.storage.objects.values()
            if o.job_id == job.uid and o.kind == "result" and o.state != "deleted"
        ]
        delivered = job.uid in world.main.deliveries and bool(results)
        body = world.kube.objects.get((job.namespace, job.name))
        phase = (body.get("status") or {}).get("phase") if body else None

        def bad(invariant: str, detail: str, job: str = job.name) -> None:
            found.append(Violation(invariant, job, detail))

        # I1: charged exactly the price for a result the user received, else nothing.
        if delivered and charged != job.price:
            bad("I1", f"delivered but charged {charged} (price {job.price})")
        if not delivered and charged:
            bad("I1", f"charged {charged} for no delivered result (phase {phase}, deleted {job.deleted_at})")
        if len([h for h in holds if h.state == "captured"]) > 1:
            bad("I1", "captured twice")
        # I2: at most one result per job.
        if len(results) > 1:
            bad("I2", f"{len(results)} results stored")
        # I3: nothing left behind by a job that did not deliver; no hold left open by any job.
        for hold in holds:
            if hold.state == "active":
                bad("I3", f"hold {hold.id} still active")
        if not delivered:
            for obj in world.storage.objects.values():
                if obj.job_id == job.uid and obj.state != "deleted":
                    bad("I3", f"object {obj.id} ({obj.kind}) left {obj.state}")
            for task in world.ai.tasks.values():
                if (
                    task.job_id == job.uid
                    and task.state in ("scheduled", "running")
                    and not task.cancel_requested
                ):
                    bad("I3", f"task {task.id} left {task.state}")
        # I4: every job ended (or was let go) once faults healed.
        if body is not None and (phase not in TERMINAL_PHASES or body["metadata"].get("deletionTimestamp")):
            bad("I4", f"still {phase}{' (deleting)' if body['metadata'].get('deletionTimestamp') else ''}")
        # I5: the log tells the same story as the services.
        if phase == "Delivered" and not delivered:
            bad("I5", "the status says Delivered, but no result was delivered")
        if phase == "Failed" and delivered:
            bad("I5", "the status says Failed, but a result was delivered")
        if body is not None and phase in TERMINAL_PHASES:  # what `kubectl wait` and kstatus read
            conditions = {c["type"]: c["status"] for c in body["status"].get("conditions", [])}
            failed = str(phase == "Failed")
            # kstatus: Stalled=True reads Failed, neither it nor Reconciling True reads Current.
            want = {
                "Complete": str(phase == "Delivered"),
                "Failed": failed,
                "Reconciling": "False",
                "Stalled": failed,
            }
            if {k: conditions.get(k) for k in want} != want:
                bad("I5", f"phase {phase} but conditions {conditions}")
    return found
