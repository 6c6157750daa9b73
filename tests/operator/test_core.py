"""The saga's decision table: one table of cases per rule, on the pure core, in milliseconds.

Each case builds a saga log, asks :meth:`SAGA.plan` or :meth:`SAGA.settle` (the rules of
:mod:`aijobs_operator.core` over the table of :mod:`aijobs_operator.saga`), and checks what a
user's money and job would see: what is called next, what is compensated, when a retry is due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aijobs_operator import core
from aijobs_operator.saga import SAGA

from aijobs.api.v1alpha1 import AIImageJobSpec, AIImageJobStatus, Phase, StepRecord

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
POLICY = core.Policy()


def _job(
    phase: Phase | None = Phase.PENDING,
    done: tuple[str, ...] = (),
    *,
    deleting: bool = False,
    spec: dict[str, Any] | None = None,
    deadline: dt.datetime | None = T0 + dt.timedelta(hours=1),
    **records: dict[str, Any],
) -> core.JobView:
    steps = [StepRecord(name=n, state="Succeeded", attempts=1) for n in done]
    for name, fields in records.items():
        steps.append(StepRecord(name=name, **fields))
    status = AIImageJobStatus(phase=phase, steps=steps, deadline=deadline if phase else None)
    body = {
        "account": "acme",
        "input": {"storageRef": {"objectId": "o1"}},
        "pipeline": "resize",
        "price": 10,
        **(spec or {}),
    }
    return core.JobView("uid-1", "ns", "job", 1, T0, deleting, AIImageJobSpec.model_validate(body), status)


FORWARD = ("charge", "upload", "schedule", "process", "capture", "deliver")


# ------------------------------------------------------------------------------ acceptance
@pytest.mark.parametrize(
    ("spec", "deleting", "expect", "phase", "reason"),
    [
        pytest.param({}, False, core.Accept, Phase.PENDING, "Accepted", id="a-new-job-is-accepted"),
        pytest.param(
            {"runAt": "2026-12-20T00:00:00Z"},
            False,
            core.Accept,
            Phase.PENDING,
            "Accepted",
            id="runAt-within-the-holds-life-is-accepted",
        ),
        pytest.param(
            {"runAt": "2026-12-29T00:00:00Z"},
            False,
            core.Finish,
            Phase.FAILED,
            "BeyondHoldLife",
            id="runAt-beyond-the-holds-life-is-refused-before-any-charge",
        ),
        pytest.param(
            {"deadline": "2027-01-15T00:00:00Z"},
            False,
            core.Finish,
            Phase.FAILED,
            "BeyondHoldLife",
            id="a-deadline-beyond-the-holds-life-is-refused",
        ),
        pytest.param(
            {}, True, core.Compensate, None, None, id="deleted-before-acceptance-undoes-what-a-lost-pass-did"
        ),
    ],
)
def test_acceptance(
    spec: dict[str, Any], deleting: bool, expect: type, phase: Phase | None, reason: str
) -> None:
    action = SAGA.plan(_job(None, spec=spec, deleting=deleting, deadline=None), T0, POLICY)
    assert isinstance(action, expect)
    if phase is not None:
        assert isinstance(action, core.Accept | core.Finish)
        assert action.status.phase == phase
        assert action.status.deadline is not None  # fixed in the log once
        assert reason in {e.reason for e in action.events}
        assert not action.status.steps  # nothing was charged


# --------------------------------------------------------------------------------- forward
@pytest.mark.parametrize(
    ("job", "now", "expect", "detail"),
    [
        pytest.param(_job(), T0, core.RunStep, "charge", id="a-pending-job-charges-first"),
        pytest.param(
            _job(Phase.SCHEDULED, FORWARD[:3]),
            T0,
            core.RunStep,
            "process",
            id="a-scheduled-job-asks-for-its-result",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:4]), T0, core.RunStep, "capture", id="a-processed-job-captures"
        ),
        pytest.param(
            _job(
                Phase.UPLOADED,
                FORWARD[:2],
                schedule={"attempts": 2, "nextAttemptAt": T0 + dt.timedelta(seconds=3)},
            ),
            T0,
            core.Wait,
            T0 + dt.timedelta(seconds=3),
            id="a-retry-waits-for-its-backoff-whoever-wakes-it",
        ),
        pytest.param(
            _job(
                Phase.UPLOADED,
                FORWARD[:2],
                schedule={"attempts": 2, "nextAttemptAt": T0 + dt.timedelta(seconds=3)},
            ),
            T0 + dt.timedelta(seconds=3),
            core.RunStep,
            "schedule",
            id="a-retry-runs-once-due",
        ),
        pytest.param(
            _job(Phase.SCHEDULED, FORWARD[:3]),
            T0 + dt.timedelta(hours=2),
            core.Compensate,
            "DeadlineExceeded",
            id="the-deadline-passing-before-capture-compensates",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:4], capture={"attempts": 1, "state": "Running"}),
            T0 + dt.timedelta(hours=2),
            core.RunStep,
            "capture",
            id="past-the-deadline-an-attempted-capture-still-goes-forward",
        ),
        pytest.param(
            _job(Phase.CHARGED, FORWARD[:1], deleting=True),
            T0,
            core.Compensate,
            "Deleted",
            id="deleting-before-capture-compensates",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:4], capture={"attempts": 1, "state": "Running"}, deleting=True),
            T0,
            core.RunStep,
            "capture",
            id="deleting-after-a-capture-attempt-delivers-first",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:5], deleting=True),
            T0,
            core.RunStep,
            "deliver",
            id="deleting-after-capture-delivers-first",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD),
            T0,
            core.Finish,
            Phase.DELIVERED,
            id="every-step-done-is-delivered",
        ),
        pytest.param(_job(Phase.DELIVERED, FORWARD), T0, core.Nothing, None, id="a-delivered-job-rests"),
        pytest.param(
            _job(Phase.DELIVERED, FORWARD, deleting=True),
            T0,
            core.LetGo,
            None,
            id="a-delivered-job-is-let-go-on-deletion-and-keeps-its-charge",
        ),
        pytest.param(_job(Phase.FAILED, deleting=True), T0, core.LetGo, None, id="a-failed-job-is-let-go"),
    ],
)
def test_forward(job: core.JobView, now: dt.datetime, expect: type, detail: Any) -> None:
    action = SAGA.plan(job, now, POLICY)
    assert isinstance(action, expect), action
    if isinstance(action, core.RunStep):
        assert action.name == detail
        rec = next(r for r in action.status.steps if r.name == detail)
        assert rec.key == f"aij:uid-1:{detail}"
        assert action.write_ahead == (detail == "capture")
    elif isinstance(action, core.Wait):
        assert action.until == detail
    elif isinstance(action, core.Compensate):
        assert action.status.phase == Phase.COMPENSATING
        assert action.events[0].reason == detail
    elif isinstance(action, core.Finish):
        assert action.status.phase == detail


def test_capture_is_recorded_as_attempted_before_it_is_called() -> None:
    action = SAGA.plan(_job(Phase.PROCESSED, FORWARD[:4]), T0, POLICY)
    assert isinstance(action, core.RunStep) and action.write_ahead
    assert SAGA.committed_to_deliver(action.status)


def test_asking_for_a_result_is_not_an_attempt() -> None:
    action = SAGA.plan(_job(Phase.SCHEDULED, FORWARD[:3]), T0, POLICY)
    assert isinstance(action, core.RunStep)
    assert next(r for r in action.status.steps if r.name == "process").attempts == 0


# ---------------------------------------------------------------------------------- settle
def _settle(job: core.JobView, outcome: core.Outcome, now: dt.datetime = T0) -> core.Settled:
    action = SAGA.plan(job, now, POLICY)
    assert isinstance(action, core.RunStep)
    return SAGA.settle(job.with_status(action.status), action, outcome, now, POLICY)


@pytest.mark.parametrize(
    ("job", "outcome", "phase", "waits"),
    [
        pytest.param(
            _job(), core.Done("held", {"holdId": "h1"}), Phase.CHARGED, False, id="done-moves-the-phase"
        ),
        pytest.param(_job(), core.Unknown("timed out"), Phase.PENDING, True, id="unknown-retries-later"),
        pytest.param(
            _job(),
            core.Definite("InsufficientCredits", "402"),
            Phase.COMPENSATING,
            False,
            id="a-refusal-compensates",
        ),
        pytest.param(
            _job(),
            core.Definite("StepError", "ValueError"),
            Phase.COMPENSATING,
            False,
            id="an-unexpected-error-compensates-never-holds-money",
        ),
        pytest.param(
            _job(charge={"attempts": 9}),
            core.Unknown("503"),
            Phase.COMPENSATING,
            False,
            id="the-retry-limit-compensates",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:4], capture={"attempts": 40}),
            core.Unknown("503"),
            Phase.PROCESSED,
            True,
            id="capture-is-never-given-up",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:4]),
            core.Definite("CaptureRefused", "hold expired"),
            Phase.COMPENSATING,
            False,
            id="a-capture-refused-leaves-the-user-uncharged",
        ),
        pytest.param(
            _job(Phase.PROCESSED, FORWARD[:5]),
            core.Definite("Refused", "422"),
            Phase.PROCESSED,
            True,
            id="past-capture-a-refused-delivery-is-retried-not-undone",
        ),
        pytest.param(
            _job(Phase.SCHEDULED, FORWARD[:3]),
            core.Waiting("Processing", "queued"),
            Phase.SCHEDULED,
            True,
            id="a-queued-task-waits",
        ),
    ],
)
def test_settle(job: core.JobView, outcome: core.Outcome, phase: Phase, waits: bool) -> None:
    settled = _settle(job, outcome)
    assert settled.status.phase == phase
    assert (settled.wait is not None) == waits


def test_a_stored_result_is_written_at_once() -> None:
    settled = _settle(
        _job(Phase.SCHEDULED, FORWARD[:3]), core.Done("stored", {"resultObjectId": "r"}, reruns=1)
    )
    assert settled.checkpoint and settled.status.reruns == 1


def test_a_definite_capture_refusal_is_not_a_commitment() -> None:
    settled = _settle(_job(Phase.PROCESSED, FORWARD[:4]), core.Definite("CaptureRefused", "expired"))
    assert not SAGA.committed_to_deliver(settled.status)


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 8, 9])
def test_retries_wait_as_the_policy_says(attempts: int) -> None:
    settled = _settle(_job(charge={"attempts": attempts - 1}), core.Unknown("timed out"))
    due = next(r for r in settled.status.steps if r.name == "charge").next_attempt_at
    assert due is not None
    full = min(POLICY.max_backoff, POLICY.initial_backoff * 2 ** (attempts - 1))
    assert 0.5 * full <= (due - T0).total_seconds() <= full


def test_retry_after_is_honoured() -> None:
    settled = _settle(_job(), core.Unknown("429", retry_after=30))
    due = next(r for r in settled.status.steps if r.name == "charge").next_attempt_at
    assert due is not None and (due - T0).total_seconds() >= 30


def test_the_same_log_gives_the_same_backoff() -> None:
    assert core.backoff("u", "charge", 4, 1, 60) == core.backoff("u", "charge", 4, 1, 60)
    assert core.backoff("u", "charge", 4, 1, 60) != core.backoff("v", "charge", 4, 1, 60)


# ---------------------------------------------------------------------------- compensation
def _compensating(**compensations: dict[str, Any]) -> core.JobView:
    job = _job(Phase.COMPENSATING, FORWARD[:2])
    status = job.status.model_copy(deep=True)
    status.compensations = [StepRecord(name=n, **f) for n, f in compensations.items()]
    return job.with_status(status)


@pytest.mark.parametrize(
    ("job", "now", "expect", "detail"),
    [
        pytest.param(_compensating(), T0, core.RunUndo, "cancel-task", id="the-task-is-cancelled-first"),
        pytest.param(
            _compensating(**{"cancel-task": {"state": "Succeeded"}}),
            T0,
            core.RunUndo,
            "delete-objects",
            id="then-the-objects-are-deleted",
        ),
        pytest.param(
            _compensating(
                **{"cancel-task": {"state": "Succeeded"}, "delete-objects": {"state": "Succeeded"}}
            ),
            T0,
            core.RunUndo,
            "release-holds",
            id="credits-are-released-last",
        ),
        pytest.param(
            _compensating(**{n: {"state": "Succeeded"} for n in (u.name for u in SAGA.undos)}),
            T0,
            core.Finish,
            Phase.FAILED,
            id="all-undone-is-failed",
        ),
        pytest.param(
            _compensating(**{"cancel-task": {"attempts": 1, "nextAttemptAt": T0 + dt.timedelta(seconds=5)}}),
            T0,
            core.Wait,
            T0 + dt.timedelta(seconds=5),
            id="a-failed-undo-waits-and-is-retried",
        ),
        pytest.param(
            _compensating(),
            T0 + dt.timedelta(days=3),
            core.RunUndo,
            "cancel-task",
            id="compensation-ignores-the-deadline",
        ),
    ],
)
def test_compensation(job: core.JobView, now: dt.datetime, expect: type, detail: Any) -> None:
    action = SAGA.plan(job, now, POLICY)
    assert isinstance(action, expect), action
    if isinstance(action, core.RunUndo):
        assert action.name == detail
    elif isinstance(action, core.Finish):
        assert action.status.phase == detail
    elif isinstance(action, core.Wait):
        assert action.until == detail


def test_an_undo_that_fails_is_retried_never_skipped() -> None:
    job = _compensating()
    action = SAGA.plan(job, T0, POLICY)
    assert isinstance(action, core.RunUndo)
    settled = SAGA.settle(job.with_status(action.status), action, core.Unknown("503"), T0, POLICY)
    assert settled.wait is not None and settled.status.phase == Phase.COMPENSATING
    assert not core.succeeded(settled.status, "cancel-task", compensation=True)


def test_an_undo_that_must_wait_is_asked_again_without_a_failure() -> None:
    """A cancelled task whose worker has not stopped yet: not an error, the job keeps
    compensating (kstatus: InProgress) and asks again later."""
    job = _compensating()
    action = SAGA.plan(job, T0, POLICY)
    assert isinstance(action, core.RunUndo) and action.name == "cancel-task"
    waiting = core.Waiting("TaskStopping", "task t1 is cancelled, its worker has not stopped yet")
    settled = SAGA.settle(job.with_status(action.status), action, waiting, T0, POLICY)
    rec = next(r for r in settled.status.compensations if r.name == "cancel-task")
    assert settled.wait is not None and settled.wait.until == rec.next_attempt_at
    assert rec.state != "Succeeded" and rec.last_error is None
    assert settled.status.phase == Phase.COMPENSATING
    assert kstatus_rule(settled.status) == "InProgress"
    assert isinstance(SAGA.plan(job.with_status(settled.status), T0, POLICY), core.Wait)


# ------------------------------------------------------------------------- the table
async def _noop(call: object) -> core.Done:
    return core.Done("done")


def test_a_step_added_to_the_table_runs_in_its_place_and_is_undone_in_reverse() -> None:
    """Adding a step is one entry: the rules read its place, condition, phase and undo from it."""
    extra = core.Step("reserve-gpu", "GpuReserved", _noop, undo=core.Undo("free-gpu", _noop))
    steps = list(SAGA.steps)
    steps.insert(3, extra)  # after schedule, before process
    saga = core.Saga(tuple(steps))
    assert saga.names[:4] == ("charge", "upload", "schedule", "reserve-gpu")
    assert [u.name for u in saga.undos] == ["free-gpu", "cancel-task", "delete-objects", "release-holds"]
    job = _job(Phase.SCHEDULED, FORWARD[:3])
    action = saga.plan(job, T0, POLICY)
    assert isinstance(action, core.RunStep) and action.name == "reserve-gpu"
    settled = saga.settle(job.with_status(action.status), action, core.Done("reserved"), T0, POLICY)
    assert any(c.type == "GpuReserved" and c.status == "True" for c in settled.status.conditions)
    assert settled.status.phase == Phase.SCHEDULED  # it reaches no phase of its own
    following = saga.plan(job.with_status(settled.status), T0, POLICY)
    assert isinstance(following, core.RunStep) and following.name == "process"
    undo = saga.plan(_compensating(), T0, POLICY)
    assert isinstance(undo, core.RunUndo) and undo.name == "free-gpu"


def test_a_table_that_would_charge_without_a_way_back_is_refused() -> None:
    with pytest.raises(ValueError, match="irreversible"):
        core.Saga((core.Step("capture", "Captured", _noop, write_ahead=True),))
    with pytest.raises(ValueError, match="unique"):
        core.Saga((core.Step("a", "A", _noop, undo=core.Undo("a", _noop)),))


def test_the_docs_show_the_table_the_operator_runs() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "saga.md").read_text()
    assert SAGA.describe() in doc


# ------------------------------------------------------------------- what kstatus reads
def run_saga(job: core.JobView, outcomes: Sequence[core.Outcome], now: dt.datetime = T0) -> AIImageJobStatus:
    """The log the core writes when each step (or undo) it runs meets the next of ``outcomes``,
    up to the point where they run out or the job ends; the clock moves on to each retry."""
    todo = list(outcomes)
    while True:
        action = SAGA.plan(job, now, POLICY)
        if isinstance(action, core.Wait) and action.until is not None and todo:
            now = action.until
            continue
        if isinstance(action, core.Accept | core.Compensate | core.Finish):
            job = job.with_status(action.status)
            if isinstance(action, core.Finish):
                return job.status
            continue
        if not isinstance(action, core.RunStep | core.RunUndo) or not todo:
            return job.status
        settled = SAGA.settle(job.with_status(action.status), action, todo.pop(0), now, POLICY)
        job = job.with_status(settled.status)
        if settled.wait is not None and not todo:
            return job.status


def _new(**spec: Any) -> core.JobView:
    return _job(None, spec=spec, deadline=None)


_DELIVERY = [
    core.Done("held"),
    core.Done("uploaded"),
    core.Done("scheduled"),
    core.Done("stored", {"resultObjectId": "r"}),
    core.Done("captured"),
]
_UNDONE = [core.Done("cancelled"), core.Done("deleted"), core.Done("released")]
_FAR = {"runAt": "2026-12-29T00:00:00Z"}

# Each state a job can be in, the log the core writes for it, and the status kstatus (Flux's
# wait: true, kpt) must read: a failed job is Failed, never Current. tests/foundation/test_kstatus.py
# replays this table on a real API server through cli-utils' own code.
JOB_STATES = [
    pytest.param(
        lambda: run_saga(_new(), [*_DELIVERY, core.Done("delivered")]), "Current", "Delivered", id="delivered"
    ),
    pytest.param(lambda: run_saga(_new(), []), "InProgress", "Pending", id="accepted"),
    pytest.param(lambda: run_saga(_new(), _DELIVERY[:2]), "InProgress", "Uploaded", id="in-progress"),
    pytest.param(
        lambda: run_saga(_new(), [core.Done("held"), core.Unknown("503")]),
        "InProgress",
        "Charged",
        id="retrying",
    ),
    pytest.param(
        lambda: run_saga(_new(), [*_DELIVERY, core.Definite("Refused", "422 the link was refused")]),
        "Failed",
        "Processed",
        id="stalled-delivery-refused-after-capture",
    ),
    pytest.param(
        lambda: run_saga(_new(), [*_DELIVERY, core.Definite("Refused", "422"), core.Unknown("timed out")]),
        "InProgress",
        "Processed",
        id="a-stalled-delivery-retried-with-an-unknown-outcome",
    ),
    pytest.param(
        lambda: run_saga(
            _new(), [core.Done("held"), core.Definite("UploadRefused", "413"), core.Unknown("503")]
        ),
        "InProgress",
        "Compensating",
        id="compensating-a-refund-retrying",
    ),
    pytest.param(
        lambda: run_saga(
            _new(),
            [core.Done("held"), core.Definite("UploadRefused", "413"), core.Definite("Refused", "409")],
        ),
        "Failed",
        "Compensating",
        id="compensation-refused",
    ),
    pytest.param(
        lambda: run_saga(_new(), [core.Definite("InsufficientCredits", "402"), *_UNDONE]),
        "Failed",
        "Failed",
        id="failed-before-charging-refused-credits",
    ),
    pytest.param(
        lambda: run_saga(_new(**_FAR), []), "Failed", "Failed", id="failed-at-acceptance-beyond-hold-life"
    ),
    pytest.param(
        lambda: core.refuse_unreadable(1, T0, "spec.price: not an integer"),
        "Failed",
        "Failed",
        id="failed-invalid-spec",
    ),
    pytest.param(
        lambda: run_saga(_new(), [core.Done("held"), core.Definite("UploadRefused", "413"), *_UNDONE]),
        "Failed",
        "Failed",
        id="failed-after-charging-refunded",
    ),
]


def kstatus_rule(status: AIImageJobStatus) -> str:
    """kstatus's rule for a custom resource whose generation is observed (cli-utils,
    pkg/kstatus/status/generic.go): the first of Reconciling and Stalled found True in the list
    decides, InProgress or Failed; neither True reads Current (no Ready condition here)."""
    for cond in status.conditions:
        if cond.status == "True" and cond.type in ("Reconciling", "Stalled"):
            return "InProgress" if cond.type == "Reconciling" else "Failed"
    return "Current"


@pytest.mark.parametrize(("build", "kstatus", "phase"), JOB_STATES)
def test_conditions_say_what_kstatus_reads(build: Any, kstatus: str, phase: str) -> None:
    status = build()
    assert status.phase == phase
    assert kstatus_rule(status) == kstatus
    true = {c.type for c in status.conditions if c.status == "True"}
    assert not {"Reconciling", "Stalled"} <= true  # never both: kstatus would read list order
    assert ("Failed" in true) == (phase == "Failed")  # kubectl wait --for=condition=Failed
    assert ("Complete" in true) == (phase == "Delivered")  # kubectl wait --for=condition=Complete


@pytest.mark.parametrize(
    ("outcomes", "reason"),
    [
        pytest.param(
            [core.Definite("InsufficientCredits", "402"), *_UNDONE], "InsufficientCredits", id="charge"
        ),
        pytest.param(
            [core.Done("held"), core.Definite("UploadRefused", "413"), *_UNDONE], "UploadRefused", id="upload"
        ),
        pytest.param(
            [
                core.Done("held"),
                core.Definite("UploadRefused", "413"),
                core.Definite("Refused", "409"),
                core.Unknown("503"),
                *_UNDONE,
            ],
            "UploadRefused",
            id="through-a-refused-undo-and-a-retry",
        ),
    ],
)
def test_a_failed_job_says_its_failure_in_stalled_and_failed(
    outcomes: list[core.Outcome], reason: str
) -> None:
    status = run_saga(_new(), outcomes)
    assert status.phase == Phase.FAILED
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Stalled"].status == "True" and conditions["Stalled"].reason == reason
    assert conditions["Failed"].reason == reason
    assert conditions["Reconciling"].status == "False"


# ------------------------------------------------------------------- acceptance not written
def _edited(job: core.JobView, accepted_as: int, now_at: int) -> core.JobView:
    """``job`` as accepted at generation ``accepted_as`` and seen again at ``now_at``."""
    status = job.status.model_copy(update={"observed_generation": accepted_as})
    return core.JobView(job.uid, job.namespace, job.name, now_at, job.created, job.deleting, job.spec, status)


@pytest.mark.parametrize(
    ("job", "expect", "detail"),
    [
        pytest.param(
            _edited(_job(Phase.SCHEDULED, FORWARD[:3]), 1, 2),
            core.Compensate,
            "SpecChanged",
            id="a-spec-changed-before-the-first-write-undoes-what-was-done-for-the-old-one",
        ),
        pytest.param(
            _edited(_job(Phase.SCHEDULED, FORWARD[:3]), 2, 2),
            core.RunStep,
            "process",
            id="the-generation-it-was-accepted-at-goes-on",
        ),
        pytest.param(
            _edited(_job(Phase.PROCESSED, FORWARD[:4], capture={"attempts": 1, "state": "Running"}), 1, 2),
            core.RunStep,
            "capture",
            id="past-captures-write-ahead-nothing-undoes-the-job",
        ),
    ],
)
def test_a_spec_changed_before_the_acceptance_was_written(
    job: core.JobView, expect: type, detail: str
) -> None:
    action = SAGA.plan(job, T0, POLICY)
    assert isinstance(action, expect)
    if isinstance(action, core.Compensate):
        assert action.status.phase == Phase.COMPENSATING
        assert detail in {e.reason for e in action.events}
    else:
        assert isinstance(action, core.RunStep) and action.name == detail


def test_acceptance_is_not_a_write_of_its_own() -> None:
    """Every key comes from the uid and every value from the spec and creation time: the
    acceptance travels with the pass's first write (the one after its calls)."""
    action = SAGA.plan(_job(None, deadline=None), T0, POLICY)
    assert isinstance(action, core.Accept) and not action.persist
    assert action.status.observed_generation == 1
    later = SAGA.plan(_job(None, deadline=None), T0 + dt.timedelta(minutes=5), POLICY)
    assert isinstance(later, core.Accept)
    assert core.hold_expiry(later.status, POLICY) == core.hold_expiry(action.status, POLICY)
