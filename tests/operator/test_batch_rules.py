"""The batch's pure rules (:mod:`aijobs_operator.core`): where a batch stands from its counts,
what its capture takes, and how a batch past its failure policy ends."""

from __future__ import annotations

import datetime as dt

import pytest
from aijobs_operator.core import batch_charge, batch_exceeded, batch_stage, progress_interval

from aijobs.api.ai import JobTaskCounts
from aijobs.api.v1alpha1 import AIImageJobSpec, BatchStatus

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=1)


def counts(
    scheduled: int = 0, running: int = 0, succeeded: int = 0, failed: int = 0, cancelled: int = 0
) -> JobTaskCounts:
    by_state = {
        "scheduled": scheduled,
        "running": running,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
    }
    return JobTaskCounts.of("job", by_state, None)


@pytest.mark.parametrize(
    ("seen", "limit", "run_at", "stage"),
    [
        pytest.param(counts(scheduled=3), None, None, "running", id="queued"),
        pytest.param(counts(running=1, succeeded=2), None, None, "running", id="running"),
        pytest.param(counts(scheduled=3), None, LATER, "waiting-for-run-at", id="run-at-ahead"),
        pytest.param(counts(scheduled=2, running=1), None, LATER, "running", id="one-started-early"),
        pytest.param(counts(succeeded=2, failed=1), None, None, "ended", id="ended"),
        pytest.param(counts(scheduled=2, failed=2), 1, None, "cancel-rest", id="past-the-policy"),
        pytest.param(counts(scheduled=2, failed=1), 1, None, "running", id="at-the-policy"),
        pytest.param(counts(running=1, failed=2), 1, None, "running", id="past-it-nothing-queued"),
        pytest.param(counts(failed=2, cancelled=3), 1, None, "ended", id="past-it-ended"),
        pytest.param(counts(scheduled=1, failed=1), 0, None, "cancel-rest", id="zero-tolerance"),
    ],
)
def test_where_a_batch_stands(
    seen: JobTaskCounts, limit: int | None, run_at: dt.datetime | None, stage: str
) -> None:
    assert batch_stage(seen, limit, run_at, NOW) == stage


@pytest.mark.parametrize(("delivered", "total", "charged"), [(0, 5, 0), (3, 5, 21), (5, 5, 35)])
def test_a_batch_charges_each_image_delivered_and_no_other(delivered: int, total: int, charged: int) -> None:
    assert batch_charge(7, delivered, total) == charged


def test_more_delivered_than_held_for_is_a_bug_not_a_charge() -> None:
    with pytest.raises(AssertionError):
        batch_charge(7, 6, 5)


def _spec(limit: int | None) -> AIImageJobSpec:
    return AIImageJobSpec.model_validate(
        {
            "account": "acme",
            "pipeline": "grayscale",
            "price": 1,
            "input": {"batch": {"prefix": "a/"}},
            "maxFailedImages": limit,
        }
    )


@pytest.mark.parametrize(
    ("limit", "failed", "exceeded"), [(None, 9, False), (2, 2, False), (2, 3, True), (0, 1, True)]
)
def test_a_batch_past_its_failure_policy(limit: int | None, failed: int, exceeded: bool) -> None:
    status = BatchStatus(total=10, succeeded=10 - failed, failed=failed)
    assert batch_exceeded(_spec(limit), status) is exceeded


def test_a_batch_without_a_deadline_gets_a_day_a_single_job_an_hour() -> None:
    from aijobs_operator.core import Policy

    policy = Policy()
    single = AIImageJobSpec.model_validate(
        {"account": "acme", "pipeline": "grayscale", "price": 1, "input": {"url": "https://x.example/a.png"}}
    )
    assert policy.for_job(single).default_deadline == dt.timedelta(hours=1)
    assert policy.for_job(_spec(None)).default_deadline == dt.timedelta(days=1)


def _progress_writes(duration: float, base: float = 30.0) -> int:
    """The progress writes a batch running ``duration`` seconds gets, interval after interval."""
    t, writes = 0.0, 0
    while True:
        t += progress_interval(base, t)
        if t >= duration:
            return writes
        writes += 1


@pytest.mark.parametrize(("duration", "at_most"), [(60, 2), (300, 10), (1800, 30), (3600, 37), (86400, 72)])
def test_a_batchs_progress_writes_grow_with_the_log_of_its_duration(duration: float, at_most: int) -> None:
    """Every 30 s at first, then a tenth of the time run: a 10,000-image batch that takes half
    an hour on this machine stays within 50 API writes with its finalizer, first pass, capture
    and delivery, and a day-long one writes about 70 times, whatever its size."""
    assert _progress_writes(duration) <= at_most
    assert _progress_writes(duration) >= min(duration // 30 - 1, 10)  # it does report progress
