"""The saga, as one table: every step in order, what it reaches, how it behaves, what undoes it.

The core's rules (:mod:`aijobs_operator.core`) read everything they need of a step here; the
engine runs the functions (:mod:`aijobs_operator.steps`); the metrics label their series with the
names; ``docs/saga.md`` is this table as :meth:`~aijobs_operator.core.Saga.describe` prints it.
Adding a step is one entry here and its function (and its undo, if it leaves something behind).
"""

from __future__ import annotations

import datetime as dt

from aijobs.api.v1alpha1 import Phase
from aijobs_operator import batch, steps
from aijobs_operator.core import Saga, Step, Undo
from aijobs_operator.steps import Call, by_input

__all__ = ["FINALIZER", "SAGA", "now"]

# Held on every job the saga has touched: it goes only once nothing is held for the job.
FINALIZER = "aijobs.io/saga"

SAGA: Saga[Call] = Saga(
    (
        Step(
            "charge",
            "Charged",
            by_input(steps.charge, batch.charge),
            reaches=Phase.CHARGED,
            undo=Undo("release-holds", steps.release_holds),  # the credits come back last
        ),
        Step(
            "upload",
            "Uploaded",
            by_input(steps.upload, batch.upload),
            reaches=Phase.UPLOADED,
            undo=Undo("delete-objects", steps.delete_objects),
        ),
        Step(
            "schedule",
            "Scheduled",
            by_input(steps.schedule, batch.schedule),
            reaches=Phase.SCHEDULED,
            undo=Undo(
                "cancel-task", by_input(steps.cancel_task, batch.cancel_tasks)
            ),  # first: no new result appears after
        ),
        Step(
            "process",
            "Processed",
            by_input(steps.process, batch.process),
            reaches=Phase.PROCESSED,
            poll=True,
            checkpoint=True,
        ),
        # The point of no return: capture moves the user's money for good.
        Step(
            "capture", "Captured", by_input(steps.capture, batch.capture), write_ahead=True, irreversible=True
        ),
        # The job is Delivered when the core finishes it, after this step.
        Step("deliver", "Delivered", by_input(steps.deliver, batch.deliver), irreversible=True),
    )
)


def now() -> dt.datetime:
    """The wall clock, for the engine and the auditor (the core and the simulator get theirs)."""
    return dt.datetime.now(dt.UTC)
