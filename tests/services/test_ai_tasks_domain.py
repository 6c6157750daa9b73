"""The AI task's life cycle as tables: what each event does to a task in each state, with no
database and no HTTP (``aijobs.api.tasks``, the rules the AI service and its twin both apply)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from aijobs.api import tasks
from aijobs.api.ai import PROBLEMS, LeasedTask, QueueDepth, Task, TaskCreate, refusal

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
GRAY = tasks.Definition("grayscale", {}, "obj-1")


def _task(**changes: Any) -> tasks.Task:
    base = tasks.create("task-1", "job-1", "acme", GRAY, run_at=None, max_attempts=3, now=NOW - 60 * SECOND)
    return dataclasses.replace(base, **changes)


def _running(holder: str = "tok", expires: dt.datetime = NOW + 30 * SECOND, **changes: Any) -> tasks.Task:
    """A task leased once, under the lease token ``holder``."""
    return _task(
        **{"state": "running", "attempts": 1, "lease": tasks.Lease(holder, "worker/w1", expires), **changes}
    )


# ------------------------------------------------------------------------- one task per job
def test_a_definition_is_checked_against_its_pipeline_and_completed_with_its_defaults() -> None:
    assert tasks.defined("grayscale", {}, "obj-1") == GRAY
    with pytest.raises(tasks.InvalidDefinition) as unknown:
        tasks.defined("mine-bitcoin", {}, "obj-1")
    with pytest.raises(tasks.InvalidDefinition) as bad:
        tasks.defined("resize", {"width": 10}, "obj-1")
    assert (unknown.value.kind, bad.value.kind) == ("unknown-pipeline", "bad-parameters")
    assert "height" in str(bad.value)


@pytest.mark.parametrize(
    ("definition", "same"),
    [
        pytest.param(GRAY, True, id="same-definition-is-a-replay"),
        pytest.param(tasks.Definition("thumbnail", {}, "obj-1"), False, id="another-pipeline"),
        pytest.param(tasks.Definition("grayscale", {}, "obj-2"), False, id="another-input"),
    ],
)
def test_a_job_scheduled_again_gets_its_task_or_a_refusal_naming_it(
    definition: tasks.Definition, same: bool
) -> None:
    existing = _task()
    if same:
        assert tasks.reuse(existing, definition) is existing
    else:
        with pytest.raises(tasks.JobHasTask) as refused:
            tasks.reuse(existing, definition)
        assert refused.value.task_id == "task-1"


def test_a_task_runs_now_unless_given_a_later_time() -> None:
    later = NOW + dt.timedelta(hours=8)
    assert tasks.create("t", "j", "acme", GRAY, run_at=None, max_attempts=5, now=NOW).run_at == NOW
    assert tasks.create("t", "j", "acme", GRAY, run_at=later, max_attempts=5, now=NOW).run_at == later


# ------------------------------------------------------------------------------- the queue
@pytest.mark.parametrize(
    ("task", "due", "standing"),
    [
        pytest.param(_task(), True, "ready", id="scheduled-and-its-time-has-come"),
        pytest.param(_task(run_at=NOW + SECOND), False, "scheduled", id="scheduled-for-later"),
        pytest.param(_task(cancel_requested=True), False, None, id="cancel-asked"),
        pytest.param(_running(), False, "running", id="running-under-a-live-lease"),
        pytest.param(_running(expires=NOW - SECOND), True, "ready", id="running-lease-ran-out"),
        pytest.param(
            _running(expires=NOW - SECOND, cancel_requested=True), False, "running", id="ran-out-cancel"
        ),
        pytest.param(_task(state="succeeded"), False, None, id="succeeded"),
        pytest.param(_task(state="failed"), False, None, id="failed"),
        pytest.param(_task(state="cancelled", cancel_requested=True), False, None, id="cancelled"),
    ],
)
def test_what_a_lease_hands_out_and_where_the_queue_depth_counts_it(
    task: tasks.Task, due: bool, standing: tasks.Standing | None
) -> None:
    assert tasks.is_due(task, NOW) is due
    assert tasks.standing(task, NOW) == standing


def test_the_depth_an_autoscaler_reads_counts_running_work_as_demand() -> None:
    depth = QueueDepth.count(["ready", "running", "running", "scheduled"])
    assert depth == QueueDepth(ready=1, running=2, scheduled=1, demand=3)


@pytest.mark.parametrize(
    ("task", "state", "attempts", "reruns", "leased"),
    [
        pytest.param(_task(), "running", 1, 0, True, id="first-run"),
        pytest.param(_running(expires=NOW - SECOND), "running", 2, 1, True, id="taken-over-is-a-rerun"),
        pytest.param(
            _running(expires=NOW - SECOND, attempts=3), "failed", 4, 1, False, id="out-of-attempts-fails"
        ),
    ],
)
def test_a_lease_counts_the_attempt_and_the_rerun(
    task: tasks.Task, state: str, attempts: int, reruns: int, leased: bool
) -> None:
    after = tasks.lease(task, owner="worker/w2", token="new", seconds=30, now=NOW)
    assert (after.state, after.attempts, after.reruns) == (state, attempts, reruns)
    assert after.lease == (tasks.Lease("new", "worker/w2", NOW + 30 * SECOND) if leased else None)
    if not leased:
        assert after.error == "gave up after 3 attempts (leases expired)"


# ----------------------------------------------------------------------------------- fencing
STALE = [
    pytest.param(_running(holder="other"), "running", id="another-token"),
    pytest.param(_task(), "scheduled", id="not-running"),
    pytest.param(_task(state="succeeded", result_object_id="obj-r"), "succeeded", id="ended"),
]


@pytest.mark.parametrize(("task", "state"), STALE)
def test_a_stale_worker_cannot_heartbeat_or_fail_a_task_it_no_longer_holds(
    task: tasks.Task, state: str
) -> None:
    with pytest.raises(tasks.LeaseLost) as beat:
        tasks.heartbeat(task, token="tok", seconds=30, now=NOW)
    assert beat.value.state == state
    if task.state != "succeeded":
        with pytest.raises(tasks.LeaseLost):
            tasks.fail(task, token="tok", reason="oom", retryable=True, now=NOW)


def test_a_heartbeat_extends_a_live_lease_but_not_one_that_ran_out() -> None:
    beat = tasks.heartbeat(_running(), token="tok", seconds=60, now=NOW)
    assert beat.lease == tasks.Lease("tok", "worker/w1", NOW + 60 * SECOND) and beat.state == "running"
    with pytest.raises(tasks.LeaseLost, match="expired"):
        tasks.heartbeat(_running(expires=NOW - SECOND), token="tok", seconds=60, now=NOW)


@pytest.mark.parametrize(
    ("task", "outcome"),
    [
        pytest.param(_running(), "succeeded", id="holder-completes"),
        pytest.param(_running(holder="other"), tasks.LeaseLost, id="stale-holder-fenced"),
        pytest.param(_running(cancel_requested=True), tasks.TaskCancelled, id="cancel-asked-refuses-result"),
        pytest.param(_task(state="cancelled", cancel_requested=True), tasks.TaskCancelled, id="cancelled"),
        pytest.param(
            _task(state="succeeded", result_object_id="obj-r", result={"size": 1}), "succeeded", id="retried"
        ),
        pytest.param(
            _task(state="succeeded", result_object_id="obj-other"), tasks.LeaseLost, id="another-result"
        ),
    ],
)
def test_a_completion_is_fenced_by_the_lease_and_repeatable(task: tasks.Task, outcome: Any) -> None:
    def complete() -> tasks.Task:
        return tasks.complete(task, token="tok", result_object_id="obj-r", result={"size": 1}, now=NOW)

    if isinstance(outcome, str):
        done = complete()
        assert (done.state, done.result_object_id, done.result, done.lease) == (
            outcome,
            "obj-r",
            {"size": 1},
            None,
        )
    else:
        with pytest.raises(outcome):
            complete()


# ------------------------------------------------------------------------ failure and cancel
@pytest.mark.parametrize(
    ("task", "retryable", "state", "run_at"),
    [
        pytest.param(_running(), True, "scheduled", NOW + 2 * SECOND, id="retryable-requeues-after-backoff"),
        pytest.param(_running(attempts=3), True, "failed", None, id="retryable-out-of-attempts"),
        pytest.param(_running(), False, "failed", None, id="final"),
        pytest.param(_running(cancel_requested=True), True, "cancelled", None, id="acknowledges-a-cancel"),
    ],
)
def test_a_failure_requeues_fails_or_acknowledges_a_cancel(
    task: tasks.Task, retryable: bool, state: str, run_at: dt.datetime | None
) -> None:
    after = tasks.fail(task, token="tok", reason="CUDA OOM", retryable=retryable, now=NOW)
    assert (after.state, after.error, after.lease) == (state, "CUDA OOM", None)
    assert after.run_at == (run_at or task.run_at)


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_a_repeated_failure_report_is_answered_with_the_task_as_it_is(state: tasks.State) -> None:
    ended = _task(state=state, error="first")
    assert tasks.fail(ended, token="any", reason="again", retryable=True, now=NOW) is ended


def test_the_backoff_doubles_up_to_a_minute() -> None:
    assert [tasks.backoff(n).total_seconds() for n in (0, 1, 3, 5, 6, 10)] == [1, 2, 8, 32, 60, 60]


@pytest.mark.parametrize(
    ("task", "state", "asked"),
    [
        pytest.param(_task(), "cancelled", True, id="scheduled-never-starts"),
        pytest.param(_running(), "running", True, id="running-is-told-at-its-heartbeat"),
        pytest.param(_task(state="succeeded"), "succeeded", False, id="succeeded-stays"),
        pytest.param(_task(state="failed"), "failed", False, id="failed-stays"),
    ],
)
def test_cancel_stops_what_has_not_ended_and_asking_again_changes_nothing(
    task: tasks.Task, state: str, asked: bool
) -> None:
    after = tasks.cancel(task, now=NOW)
    assert (after.state, after.cancel_requested) == (state, asked)
    assert tasks.cancel(after, now=NOW + SECOND) == after  # idempotent


def test_a_cancelled_running_task_sees_the_cancel_in_its_heartbeat() -> None:
    told = tasks.heartbeat(tasks.cancel(_running(), now=NOW), token="tok", seconds=30, now=NOW)
    assert told.cancel_requested and told.state == "running"


@pytest.mark.parametrize(
    ("task", "state"),
    [
        pytest.param(
            _running(expires=NOW - SECOND, cancel_requested=True), "cancelled", id="vanished-after-cancel"
        ),
        pytest.param(_running(expires=NOW - SECOND, attempts=3), "failed", id="out-of-attempts"),
        pytest.param(_running(expires=NOW - SECOND), "running", id="waits-for-a-new-lease"),
        pytest.param(_running(cancel_requested=True), "running", id="lease-still-live"),
    ],
)
def test_the_sweep_ends_tasks_whose_worker_vanished(task: tasks.Task, state: str) -> None:
    assert tasks.settle_expired(task, now=NOW).state == state


# --------------------------------------------------------------------------------- the wire
@pytest.mark.parametrize(
    ("error", "status", "slug", "members"),
    [
        pytest.param(tasks.UnknownTask("t"), 404, "unknown-task", {}, id="unknown"),
        pytest.param(tasks.JobHasTask("j", "t"), 409, "job-has-task", {"taskId": "t"}, id="job-has-task"),
        pytest.param(
            tasks.LeaseLost("lost", "running"), 409, "lease-lost", {"state": "running"}, id="lease-lost"
        ),
        pytest.param(tasks.TaskCancelled("t"), 409, "task-cancelled", {}, id="cancelled"),
        pytest.param(tasks.InvalidDefinition("x", "bad-parameters"), 422, "bad-parameters", {}, id="params"),
        pytest.param(
            tasks.InvalidDefinition("x", "unknown-pipeline"), 422, "unknown-pipeline", {}, id="pipeline"
        ),
    ],
)
def test_each_refusal_has_its_problem(
    error: tasks.TaskError, status: int, slug: str, members: dict[str, str]
) -> None:
    known, extra = refusal(error)
    assert (known.status, known.slug, extra) == (status, slug, members)
    assert set(PROBLEMS) == {
        "unknown-task",
        "job-has-task",
        "lease-lost",
        "task-cancelled",
        "unknown-pipeline",
        "bad-parameters",
    }


def test_a_task_goes_on_the_wire_as_ai_has_always_written_it() -> None:
    wire = LeasedTask.of(_running()).model_dump(mode="json", by_alias=True)
    assert (
        wire["runAt"] == "2030-01-01T11:59:00+00:00" and wire["leaseExpiresAt"] == "2030-01-01T12:00:30+00:00"
    )
    assert wire["leaseToken"] == "tok" and wire["inputObjectId"] == "obj-1" and wire["state"] == "running"
    public = Task.of(_running()).model_dump(mode="json", by_alias=True)
    assert "leaseToken" not in public and public["resultObjectId"] is None
    assert Task.model_validate(public) == Task.of(_running())  # what a client reads back


def test_a_single_image_jobs_task_request_is_sent_as_it_always_was() -> None:
    """Its Idempotency-Key replays compare bytes: a field it does not set must not appear."""
    sent = TaskCreate(job_id="j", account="acme", pipeline="grayscale", input_object_id="o").wire()
    assert sent == {"jobId": "j", "account": "acme", "pipeline": "grayscale", "inputObjectId": "o"}
    batch = TaskCreate(job_id="j", account="acme", pipeline="grayscale", input_object_id="o", item=0).wire()
    assert batch == {**sent, "item": 0}


def test_a_batch_images_task_is_its_own_and_keeps_its_definition() -> None:
    image = tasks.create("t-3", "j", "acme", GRAY, run_at=None, max_attempts=5, now=NOW, item=3)
    assert tasks.reuse(image, GRAY) == image
    with pytest.raises(tasks.JobHasTask, match="image 3 of job j already has task t-3") as refused:
        tasks.reuse(image, tasks.Definition("thumbnail", {}, "obj-1"))
    assert refused.value.task_id == "t-3"
    assert Task.of(image).item == 3 and Task.of(_task()).item is None
