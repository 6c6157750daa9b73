"""The saga as data, and the pure rules over a job's status.

Each :class:`Step` names the phase it reaches, the condition it sets, and whether its success
should be written at once (``checkpoint``). What a step does and undoes lives in
:mod:`aijobs_operator.steps`, looked up by the step's name; the engine never special-cases one.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

FINALIZER = "aijobs.io/saga"
TERMINAL = ("Delivered", "Failed")


@dataclass(frozen=True)
class Step:
    name: str
    phase: str | None  # the phase the job reaches when this step succeeds
    condition: str
    checkpoint: bool = False  # write the status as soon as this step succeeds
    compensable: bool = True  # past a non-compensable step the job can only go forward


# Forward order. Undo runs in reverse (see steps.UNDO): cancel the task, delete the job's
# objects, release its holds. Capture happens only after the result is stored.
STEPS: tuple[Step, ...] = (
    Step("charge", "Charged", "Charged"),
    Step("upload", "Uploaded", "Uploaded"),
    Step("schedule", "Scheduled", "Scheduled"),
    Step("process", "Processed", "Processed", checkpoint=True),
    Step("capture", None, "Captured", compensable=False),
    Step("deliver", "Delivered", "Delivered", compensable=False),
)
STEP_CONDITIONS = ("Charged", "Uploaded", "Scheduled", "Processed", "Delivered", "Compensated")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def idempotency_key(uid: str, step: str) -> str:
    """One key per job and step (or compensation): a retry, a restart, a duplicate event reuse it."""
    return f"aij:{uid}:{step}"


def effective_deadline(spec: dict[str, Any], created: str, default_seconds: int) -> dt.datetime:
    if spec.get("deadline"):
        return parse(spec["deadline"])
    start = parse(spec["runAt"]) if spec.get("runAt") else parse(created)
    return start + dt.timedelta(seconds=default_seconds)


def set_condition(
    status: dict[str, Any], type_: str, value: str, reason: str, message: str, generation: int
) -> bool:
    """Set one condition in place; ``lastTransitionTime`` moves only when its status changes.
    Returns whether anything changed (so that a pass with no news writes nothing)."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == type_:
            if (cond["status"], cond.get("reason"), cond.get("message")) == (value, reason, message):
                return False
            if cond["status"] != value:
                cond["lastTransitionTime"] = iso(now())
            cond.update(status=value, reason=reason, message=message[:4000], observedGeneration=generation)
            return True
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:4000],
            "lastTransitionTime": iso(now()),
            "observedGeneration": generation,
        }
    )
    return True


def record(status: dict[str, Any], name: str, kind: str = "steps") -> dict[str, Any]:
    records: list[dict[str, Any]] = status.setdefault(kind, [])
    for rec in records:
        if rec["name"] == name:
            return rec
    rec = {"name": name, "state": "Pending", "attempts": 0, "remoteIds": {}}
    records.append(rec)
    return rec


def succeeded(status: dict[str, Any], name: str, kind: str = "steps") -> bool:
    return any(r["name"] == name and r.get("state") == "Succeeded" for r in status.get(kind, []))


def past_the_point_of_no_return(status: dict[str, Any]) -> bool:
    """Once a non-compensable step (capture) succeeded, the job can only be delivered."""
    return any(succeeded(status, s.name) for s in STEPS if not s.compensable)


def committed_to_deliver(status: dict[str, Any]) -> bool:
    """Once capture was *attempted*, its outcome may be a charge: it is retried with its key until
    the answer is known, never abandoned for a deadline or a retry limit."""
    return any(
        r.get("attempts", 0) > 0
        for r in status.get("steps", [])
        if r["name"] in {s.name for s in STEPS if not s.compensable}
    )


def backoff(attempts: int, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter in [50%, 100%], never below the server's Retry-After."""
    delay = min(maximum, initial * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.0)
    return float(max(delay, retry_after or 0.0))
