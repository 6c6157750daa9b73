"""The saga, as one table: every step in order, what it reaches, how it behaves, what undoes it.

The core's rules (:mod:`aijobs_operator.core`) read everything they need of a step here; the
engine runs the functions (:mod:`aijobs_operator.steps`); the metrics label their series with the
names; ``docs/saga.md`` is this table as :meth:`~aijobs_operator.core.Saga.describe` prints it.
Adding a step is one entry here and its function (and its undo, if it leaves something behind).
"""

from __future__ import annotations

import datetime as dt

from aijobs.api.v1alpha1 import Phase
from aijobs_operator import steps
from aijobs_operator.core import Saga, Step, Undo
from aijobs_operator.steps import Call

__all__ = ["FINALIZER", "SAGA", "now"]

# Held on every job the saga has touched: it goes only once nothing is held for the job.
FINALIZER = "aijobs.io/saga"

SAGA: Saga[Call] = Saga(
    (
        Step(
            "charge",
            "Charged",
            steps.charge,
            reaches=Phase.CHARGED,
            undo=Undo("release-holds", steps.release_holds),  # the credits come back last
        ),
        Step(
            "upload",
            "Uploaded",
            steps.upload,
            reaches=Phase.UPLOADED,
            undo=Undo("delete-objects", steps.delete_objects),
        ),
        Step(
            "schedule",
            "Scheduled",
            steps.schedule,
            reaches=Phase.SCHEDULED,
            undo=Undo("cancel-task", steps.cancel_task),  # first: no new result appears after
        ),
        Step("process", "Processed", steps.process, reaches=Phase.PROCESSED, poll=True, checkpoint=True),
        # The point of no return: capture moves the user's money for good.
        Step("capture", "Captured", steps.capture, write_ahead=True, irreversible=True),
        # The job is Delivered when the core finishes it, after this step.
        Step("deliver", "Delivered", steps.deliver, irreversible=True),
    )
)


def now() -> dt.datetime:
    """The wall clock, for the engine and the auditor (the core and the simulator get theirs)."""
    return dt.datetime.now(dt.UTC)
