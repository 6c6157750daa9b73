"""Main API's submission use case, checked without a network: what an order must look like before
anything is stored or created, and how many jobs an account may have in flight (the slots, on
PostgreSQL and on the demo's SQLite)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aijobs_services.kit.problems import Unprocessable
from aijobs_services.main.submission import parse, parse_run_at
from kubernetes.client.exceptions import ApiException
from sqlalchemy.orm import Session, sessionmaker

from aijobs.api.storage import StoredObject
from aijobs.wire.client import Refused

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("2026-W48-5T12:00:00Z", "RFC 3339", id="iso-week-date"),
        pytest.param("20261128T120000Z", "RFC 3339", id="basic-format"),
        pytest.param("2026-11-28T12:00:00", "RFC 3339", id="no-zone"),
        pytest.param("2026-11-28 12:00:00Z", "RFC 3339", id="space-separator"),
        pytest.param("2026-02-30T12:00:00Z", "not a valid time", id="no-such-day"),
        pytest.param("2026-11-27T10:00:00Z", "in the past", id="past"),
        pytest.param("2026-12-30T12:00:00Z", "too far ahead", id="beyond-a-holds-life"),
        pytest.param("9999-12-31T23:59:59Z", "too far ahead", id="year-9999"),
    ],
)
def test_a_run_at_the_crd_or_a_hold_would_refuse_is_refused_first(text: str, says: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        parse_run_at(text, NOW)
    assert says in str(refused.value.detail)


@pytest.mark.parametrize(
    "text", ["2026-11-28T12:00:00Z", "2026-11-28T12:00:00.5+02:00", "2026-12-20T00:00:00-05:00"]
)
def test_a_good_run_at_is_taken(text: str) -> None:
    assert parse_run_at(text, NOW) > NOW


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        pytest.param({"parameters": "[1]"}, "JSON object", id="parameters-not-an-object"),
        pytest.param({"parameters": "[" * 50_000}, "JSON object", id="parameters-nested-50000-deep"),
        pytest.param({"pipeline": "teleport"}, "pipeline", id="unknown-pipeline"),
        pytest.param({"url": "ftp://x/y.png", "has_file": False}, "http(s)", id="not-http"),
        pytest.param({"url": "https://x/y.png"}, "exactly one", id="file-and-url"),
        pytest.param({"has_file": False}, "exactly one", id="neither"),
    ],
)
def test_a_bad_order_is_refused_with_the_field_named(fields: dict[str, object], says: str) -> None:
    args: dict[str, object] = {
        "pipeline": "grayscale",
        "parameters": "{}",
        "run_at": None,
        "url": None,
        "has_file": True,
        **fields,
    }
    with pytest.raises(Unprocessable) as refused:
        parse(**args)  # type: ignore[arg-type]
    assert says in str(refused.value.detail)


def test_an_account_submitting_too_fast_is_told_when_to_come_back() -> None:
    from aijobs_services.main.limits import SubmissionLimiter

    now = [0.0]
    limiter = SubmissionLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("acme") for _ in range(3)] == [None, None, None]  # the burst
    wait = limiter.take("acme")
    assert wait is not None and 0.9 <= wait <= 1.0  # one a second at 60 a minute
    assert limiter.take("globex") is None  # accounts do not share a bucket
    now[0] += 1.0
    assert limiter.take("acme") is None


# -- jobs in flight: the decision, the slots, the use case -------------------------------------


@pytest.mark.parametrize(
    ("listed", "reserved", "count"),
    [
        pytest.param({}, set(), 0, id="nothing"),
        pytest.param(
            {"a": None, "b": "Running", "c": "Delivered", "d": "Failed"}, set(), 2, id="ended-jobs-free-slots"
        ),
        pytest.param({"a": "Running"}, {"b", "c"}, 3, id="reserved-jobs-not-listed-yet-count"),
        pytest.param({"a": "Running", "b": None}, {"b"}, 2, id="a-reserved-job-once-listed-counts-once"),
        pytest.param({"a": "Delivered"}, {"a"}, 0, id="a-reserved-job-that-ended-counts-not"),
    ],
)
def test_jobs_in_flight_count_each_job_once(
    listed: dict[str, str | None], reserved: set[str], count: int
) -> None:
    from aijobs_services.main.limits import jobs_in_flight

    assert jobs_in_flight(listed, reserved) == count


@pytest.mark.parametrize(
    ("name", "listed", "reserved", "admitted"),
    [
        pytest.param("new", {"a": None}, {"b"}, True, id="under-the-limit"),
        pytest.param("new", {"a": None, "b": None}, {"c"}, False, id="at-the-limit-with-a-reservation"),
        pytest.param(
            "new", {"a": None, "b": None, "c": "Failed"}, set(), True, id="an-ended-job-frees-its-slot"
        ),
        pytest.param("a", {"a": None, "b": None, "c": None}, set(), True, id="a-retry-of-a-listed-job"),
        pytest.param("c", {"a": None, "b": None}, {"c"}, True, id="a-retry-of-a-job-being-submitted"),
    ],
)
def test_a_new_job_is_admitted_under_the_limit_and_a_retry_always(
    name: str, listed: dict[str, str | None], reserved: set[str], admitted: bool
) -> None:
    from aijobs_services.main.limits import admits

    assert admits(name, listed, reserved, limit=3) is admitted


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def main_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Main's database as its migrations make it."""
    from aijobs_services.kit.db import make_engine, make_sessionmaker, migrate
    from aijobs_services.registry import spec

    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'main.db'}"
    )
    migrate(url, spec("main").migrations)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _slot_rows(sessions: sessionmaker[Session]) -> list[str]:
    from aijobs_services.main.models import SubmissionSlot

    with sessions() as session:
        return sorted(session.scalars(sa.select(SubmissionSlot.job_name)))


def test_a_released_slot_is_free_again(main_sessions: sessionmaker[Session]) -> None:
    from aijobs_services.main.limits import AtLimit, SubmissionSlots

    slots = SubmissionSlots(main_sessions, dt.timedelta(minutes=5))
    held = [slots.reserve("acme", f"job-{i}", 2, dict, NOW) for i in range(2)]
    with pytest.raises(AtLimit) as full:
        slots.reserve("acme", "job-2", 2, dict, NOW)
    assert full.value.in_flight == 2
    assert _slot_rows(main_sessions) == ["job-0", "job-1"]  # a refusal reserves nothing
    assert slots.reserve("globex", "job-9", 2, dict, NOW)  # accounts do not share slots
    slots.release(held[0])
    assert slots.reserve("acme", "job-2", 2, dict, NOW).job_name == "job-2"


def test_a_slot_left_by_a_dead_replica_stops_counting_after_its_bound(
    main_sessions: sessionmaker[Session],
) -> None:
    from aijobs_services.main.limits import AtLimit, SubmissionSlots

    slots = SubmissionSlots(main_sessions, dt.timedelta(minutes=5))
    slots.reserve("acme", "job-dead", 1, dict, NOW)  # never released
    with pytest.raises(AtLimit):
        slots.reserve("acme", "job-new", 1, dict, NOW + dt.timedelta(minutes=4, seconds=59))
    slots.reserve("acme", "job-new", 1, dict, NOW + dt.timedelta(minutes=5, seconds=1))
    assert _slot_rows(main_sessions) == ["job-new"]  # and it is deleted


def test_a_slot_whose_job_is_listed_is_not_counted_twice(main_sessions: sessionmaker[Session]) -> None:
    from aijobs_services.main.limits import AtLimit, SubmissionSlots

    slots = SubmissionSlots(main_sessions, dt.timedelta(minutes=5))
    slots.reserve("acme", "job-a", 2, dict, NOW)  # created, but its release was lost
    slots.reserve("acme", "job-b", 2, lambda: {"job-a": "Running"}, NOW)
    with pytest.raises(AtLimit) as full:
        slots.reserve("acme", "job-c", 2, lambda: {"job-a": "Running", "job-b": None}, NOW)
    assert full.value.in_flight == 2


def test_parallel_reservations_never_pass_the_limit(main_sessions: sessionmaker[Session]) -> None:
    """Each thread lists the jobs (slowly), then creates its job and releases its slot, as
    ``submit`` does: however they interleave, `limit` jobs are created, no more."""
    from aijobs_services.main.limits import AtLimit, SubmissionSlots

    slots = SubmissionSlots(main_sessions, dt.timedelta(minutes=5))
    created: dict[str, str | None] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def listing() -> dict[str, str | None]:
        time.sleep(0.02)  # a window in which another admission could count too
        with lock:
            return dict(created)

    def submit(i: int) -> bool:
        start.wait()
        try:
            slot = slots.reserve("acme", f"job-{i}", 3, listing, NOW)
        except AtLimit:
            return False
        time.sleep(0.2)  # the upload: its job is created long after it was counted
        with lock:
            created[slot.job_name] = None
        slots.release(slot)
        return True

    with ThreadPoolExecutor(8) as pool:
        admitted = list(pool.map(submit, range(8)))
    assert sum(admitted) == 3 and len(created) == 3
    assert _slot_rows(main_sessions) == []


class _Kube:
    """The Kubernetes API's custom objects, in memory, answering as the real one does."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        if name not in self.jobs:
            raise ApiException(status=404)
        return self.jobs[name]

    def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, **kw: Any) -> Any:
        time.sleep(0.02)
        return {"items": list(self.jobs.values())}

    def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: Any
    ) -> Any:
        if body["metadata"]["name"] in self.jobs:
            raise ApiException(status=409)
        body["metadata"]["namespace"] = ns
        self.jobs[body["metadata"]["name"]] = body
        return body


class _Storage:
    """Storage that takes a while to store an upload, or refuses it."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    async def fetch(self, into: type[StoredObject], method: str, path: str, **kw: Any) -> StoredObject:
        await asyncio.sleep(0.05)
        if self.refuse:
            raise Refused("storage", 413, "quota-exceeded", "over the account's quota", {})
        key = path.removeprefix("/v1/objects/")
        return into(
            id=key.rsplit(":", 1)[-1],
            key=key,
            account="acme",
            kind="input",
            sha256="0" * 64,
            size=3,
            content_type="image/png",
            width=1,
            height=1,
            state="staging",
            created_at=dt.datetime.now(dt.UTC),
        )


def _submission(key: str) -> Any:
    from aijobs_services.main.submission import Order, Submission

    return Submission("acme-user", "acme", "acme-jobs", key, Order("grayscale", {}, None, None, None), b"png")


async def test_parallel_submissions_create_no_more_jobs_than_the_limit(
    main_sessions: sessionmaker[Session],
) -> None:
    from aijobs_services.main.settings import MainSettings
    from aijobs_services.main.submission import Edges, RateLimited, submit

    kube = _Kube()
    edges = Edges(MainSettings(service="main", max_jobs_in_flight=3), _Storage(), kube, None, main_sessions)
    answers = await asyncio.gather(
        *(submit(_submission(f"k{i}"), edges) for i in range(6)), return_exceptions=True
    )
    assert sorted(a[0] if isinstance(a, tuple) else a.status for a in answers) == [201] * 3 + [429] * 3
    assert all(isinstance(a, RateLimited) for a in answers if not isinstance(a, tuple))
    assert len(kube.jobs) == 3 and _slot_rows(main_sessions) == []
    made = next(i for i, a in enumerate(answers) if isinstance(a, tuple))
    assert (await submit(_submission(f"k{made}"), edges))[0] == 200  # a retry at the limit is answered


async def test_a_submission_storage_refuses_gives_its_slot_back(main_sessions: sessionmaker[Session]) -> None:
    from aijobs_services.kit.problems import Problem
    from aijobs_services.main.settings import MainSettings
    from aijobs_services.main.submission import Edges, submit

    kube = _Kube()
    settings = MainSettings(service="main", max_jobs_in_flight=1)
    refused = Edges(settings, _Storage(refuse=True), kube, None, main_sessions)
    with pytest.raises(Problem) as problem:
        await submit(_submission("k1"), refused)
    assert problem.value.status == 413 and _slot_rows(main_sessions) == []
    status, _ = await submit(_submission("k2"), Edges(settings, _Storage(), kube, None, main_sessions))
    assert status == 201
