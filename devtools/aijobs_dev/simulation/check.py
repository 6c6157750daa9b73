"""I1-I5, tenancy and the auditor's repairs after a simulated schedule, judged from what the twins
hold — not from the operator's own account of it (a status that says Delivered proves nothing; a
delivery Main API recorded of a result Storage still holds does).

- **I1-I5**: the saga's promises, job by job (see ``docs``: charged exactly for a delivered result,
  one result, nothing left behind, every job ended, the log tells the services' story).
- **T1** (tenancy): a namespace charges only an account it was bound to while the job ran: no
  hold on an account from a namespace not bound to it, so a namespace two CreditAccounts list
  charges nobody but the one that holds it.
- **A1-A3** (the auditor): after its pass every damage the log justifies repairing is repaired
  (a stray hold released, a lost capture captured, an orphan object deleted, an orphan task
  cancelled) and every finished job's verdict says so, an active hold of a finished job before
  the daily recheck comes round; the auditor moved money only where the
  log and the services justified it; a doubtful capture is reported, never made.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from aijobs.api.rules import TERMINAL_PHASES
from aijobs_dev.simulation.world import Damage, SimJob, World

__all__ = ["Violation", "check"]


@dataclass(frozen=True)
class Violation:
    invariant: str
    job: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} {self.job}: {self.detail}"


def check(world: World) -> list[Violation]:
    # A job whose capture was undone while AI disowned its task is left for a person on purpose:
    # its money is judged by A3, not by I1/I3/I5.
    doubtful = {d.uid for d in world.damage if d.kind == "doubtful-capture"}
    return [
        *_saga(world, doubtful),
        *_tenancy(world),
        *_audit(world, doubtful),
    ]


def _saga(world: World, doubtful: set[str]) -> list[Violation]:
    found: list[Violation] = []
    for job in world.jobs:
        if job.images:
            found.extend(_batch(world, job))
            continue
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
        judged = job.uid not in doubtful

        def bad(invariant: str, detail: str, job: str = job.name) -> None:
            found.append(Violation(invariant, job, detail))

        # I1: charged exactly the price for a result the user received, else nothing.
        if judged and delivered and charged != job.price:
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
            if judged and hold.state == "active":
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
            bad("I4", _still(phase, body))
        # I5: the log tells the same story as the services.
        if judged and phase == "Delivered" and not delivered:
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


def _batch(world: World, job: SimJob) -> list[Violation]:
    """I1-I5 for a batch, per image: charged exactly ``price x`` the images whose result the user
    received (the delivered manifest's succeeded lines, each naming a committed result of the
    job), 0 when none; at most one result per image; nothing left but those results and the
    manifest, nothing when undelivered; ended; and a log that says so."""
    found: list[Violation] = []

    def bad(invariant: str, detail: str) -> None:
        found.append(Violation(invariant, job.name, detail))

    holds = [h for h in world.payment.holds.values() if h.job_id == job.uid]
    captured = [h for h in holds if h.state == "captured"]
    charged = sum(h.captured_amount for h in captured)
    # The job's objects: those it is attached to, and those stored under its keys whatever they
    # are attached to (a fetched input left unattached would outlive the compensation).
    mine = f"job:{job.uid}:"
    live = [
        o
        for o in world.storage.objects.values()
        if (o.job_id == job.uid or o.key.startswith(mine)) and o.state != "deleted"
    ]
    manifests = [o for o in live if o.kind == "manifest"]
    shipped = job.uid in world.main.deliveries and len(manifests) == 1
    received: dict[int, str] = {}  # image index -> its result, as the manifest names it
    if shipped:
        content = world.manifests.get(manifests[0].id)
        if content is None:
            bad("I5", f"manifest {manifests[0].id} was delivered but never stored through the operator")
        else:
            for line in map(json.loads, content.decode().splitlines()):
                if line["state"] != "succeeded":
                    continue
                result = world.storage.objects.get(line["result"])
                if result is None or result.state != "committed" or result.job_id != job.uid:
                    bad("I1", f"image {line['item']}'s result {line['result']} is not a committed result")
                elif line["item"] in received:
                    bad("I2", f"image {line['item']} is listed twice")
                else:
                    received[line["item"]] = result.id
    body = world.kube.objects.get((job.namespace, job.name))
    status = (body.get("status") or {}) if body else {}
    phase = status.get("phase")
    # I1: price x images received, exactly; nothing when none was.
    if charged != job.price * len(received):
        bad("I1", f"charged {charged} for {len(received)} images received (price {job.price}, phase {phase})")
    if len(captured) > 1:
        bad("I1", "captured twice")
    # I2: one result per image received (a second one kept for an image is an object the
    # manifest does not name: I3 below).
    named = list(received.values())
    if len(set(named)) != len(named):
        bad("I2", f"the manifest names one result for two images: {sorted(named)}")
    # I3: no hold left open; nothing kept but what the manifest names (and itself).
    for hold in holds:
        if hold.state == "active":
            bad("I3", f"hold {hold.id} still active")
    kept = set(received.values()) | {m.id for m in manifests if shipped}
    # An image list's URLs, fetched into the job's own inputs, stay with a delivered batch (as a
    # single job's input does) and go with an undelivered one's compensation.
    fetched = {f"job:{job.uid}:input:{item}" for item in range(job.images)}  # one key per image
    kept |= {o.id for o in live if shipped and o.kind == "input" and o.key in fetched}
    for obj in live:
        if obj.id not in kept:
            bad("I3", f"object {obj.id} ({obj.kind}) left {obj.state}")
    for task in world.ai.tasks.values():
        if task.job_id == job.uid and task.state in ("scheduled", "running") and not task.cancel_requested:
            bad("I3", f"task {task.id} left {task.state}")
    # I4: ended once faults healed.
    if body is not None and (phase not in TERMINAL_PHASES or body["metadata"].get("deletionTimestamp")):
        bad("I4", _still(phase, body))
    # I5: the log's story is the services': delivered iff a manifest was; its counts the manifest's.
    if body is not None and phase in TERMINAL_PHASES:
        if (phase == "Delivered" or status.get("result")) and not shipped:
            bad("I5", f"the status says {phase} with a result, but no manifest was delivered")
        if shipped and not status.get("result"):
            bad("I5", f"a manifest was delivered, but the status ({phase}) has no result")
        batch = status.get("batch") or {}
        if shipped and batch.get("succeeded") != len(received):
            bad(
                "I5", f"status counts {batch.get('succeeded')} images succeeded, the manifest {len(received)}"
            )
        if phase == "Failed" and shipped:
            reason = next(
                (c.get("reason") for c in status.get("conditions", []) if c["type"] == "Failed"), None
            )
            if reason != "TooManyFailedImages":
                bad("I5", f"Failed ({reason}) yet delivered")
    return found


def _bound_between(world: World, job: SimJob, until: dt.datetime) -> bool:
    """Whether Auth bound the job's namespace to its account at some moment from the job's
    creation to ``until`` (the authorization comes before the hold; a binding released between
    the two does not undo a charge already authorized)."""
    since: dt.datetime | None = None
    for when, op, namespace, account in world.auth.binding_log:
        if (namespace, account) != (job.namespace, job.account):
            continue
        if op == "bind":
            since = when
        else:
            if since is not None and since <= until and when >= job.created_at:
                return True
            since = None
    return since is not None and since <= until


def _holder(world: World, namespace: str, at: dt.datetime) -> str | None:
    holder = None
    for when, op, ns, account in world.auth.binding_log:
        if ns == namespace and when <= at:
            holder = account if op == "bind" else (None if holder == account else holder)
    return holder


def _tenancy(world: World) -> list[Violation]:
    found: list[Violation] = []
    placed = {d.target for d in world.damage}  # holds the world made behind the operator's back
    for job in world.jobs:
        for hold in world.payment.holds.values():
            if hold.job_id != job.uid or hold.id in placed:
                continue
            if hold.account != job.account or not _bound_between(world, job, hold.created_at):
                holder = _holder(world, job.namespace, hold.created_at)
                found.append(
                    Violation(
                        "T1",
                        job.name,
                        f"hold {hold.id} ({hold.state}) on account {hold.account} from namespace "
                        f"{job.namespace}, which was not bound to it (held by {holder})",
                    )
                )
    return found


def _repaired(world: World, damage: Damage) -> bool:
    if damage.kind in ("stray-hold", "gone-hold"):
        return world.payment.holds[damage.target].state != "active"
    if damage.kind == "lost-capture":
        return world.payment.holds[damage.target].state == "captured"
    if damage.kind in ("orphan-object", "gone-object"):
        return world.storage.objects[damage.target].state == "deleted"
    if damage.kind in ("orphan-task", "gone-task"):  # cancelled, or ended on its own before the auditor came
        task = world.ai.tasks[damage.target]
        return task.state not in ("scheduled", "running") or task.cancel_requested
    raise ValueError(f"no repair for {damage.kind}")


def _audit(world: World, doubtful: set[str]) -> list[Violation]:
    found: list[Violation] = []
    names = {job.uid: job.name for job in world.jobs}
    # A1: what the log justifies repairing is repaired, and the verdict of each finished job says
    # the auditor saw it through (consistent or repaired; needs-attention only where it must).
    for damage in world.damage:
        if damage.kind != "doubtful-capture" and not _repaired(world, damage):
            found.append(Violation("A1", names[damage.uid], f"{damage.kind} {damage.target} not repaired"))
    for damage in world.unsettled_before_recheck:  # a finished job's active hold is found at once
        found.append(
            Violation("A1", names[damage.uid], f"{damage.kind} {damage.target} waited for the daily recheck")
        )
    for job in world.jobs:
        body = world.kube.objects.get((job.namespace, job.name))
        if body is None or (body.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            continue
        # A consistent verdict is not written (no API write when all agree): the auditor's answer.
        verdict = (body["status"].get("audit") or {}).get("verdict") or world.verdicts.get(job.uid)
        want = {"needs-attention"} if job.uid in doubtful else {"consistent", "repaired"}
        if verdict not in want:
            found.append(
                Violation("A1", job.name, f"audit verdict {verdict}, expected one of {sorted(want)}")
            )
    # A2: the auditor settled a hold only as the saga log and the services justified: a capture
    # of a delivered job whose task succeeded with a committed result and that had no other
    # capture; a release of a failed job's hold, or of a hold beside one already captured.
    for move in world.money_moves:
        if move.action == "captured":
            fair = move.phase == "Delivered" and move.evidence and not move.other_captured
        else:
            fair = move.phase in ("Failed", "Gone") or move.other_captured
        if not fair:
            found.append(
                Violation(
                    "A2",
                    names[move.uid],
                    f"the auditor {move.action} {move.hold} (phase {move.phase}, evidence {move.evidence}, "
                    f"another captured {move.other_captured})",
                )
            )
    # A3: a capture the log does not justify is reported, never made.
    for damage in world.damage:
        if damage.kind == "doubtful-capture" and world.payment.holds[damage.target].state == "captured":
            found.append(Violation("A3", names[damage.uid], f"doubtful hold {damage.target} was captured"))
    return found


def _still(phase: Any, body: dict[str, Any]) -> str:
    """I4's finding: the phase a job was left in, and whether its deletion is stuck too."""
    return f"still {phase}{' (deleting)' if body['metadata'].get('deletionTimestamp') else ''}"
