"""The worker's loop is a pipeline: the next batch is leased and its inputs fetched while this one
infers, results are delivered in the background, and a Storage outage backs up into the loop
(no more leases) once the bound of deliveries in flight is reached. On SIGTERM the batch already
prefetched is run, not handed back. A stage that hangs fails /healthz while the others go round.

AI and Storage are played by small fakes with the client methods the worker calls; the completions
go through the real :class:`~aijobs.wire.bulk.Batcher`. Inference is a fake runner whose first
batch can be held on an event, so what happens meanwhile is seen without timing anything."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch
from aijobs_worker import codec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import LOOP, Beat, Pulse, liveness_of_lanes
from aijobs_worker.loop import Worker
from aijobs_worker.runner import Item
from aijobs_worker.spool import Spool
from pydantic import BaseModel

from aijobs.wire.bulk import Batcher
from aijobs.wire.client import Ambiguous

M = TypeVar("M", bound=BaseModel)

_NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
_INPUT = codec.encode(torch.full((3, 4, 6), 0.5))


def _task(task_id: str, state: str, leased: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": task_id,
        "jobId": f"job-{task_id}",
        "account": "acme",
        "pipeline": "grayscale",
        "params": {},
        "inputObjectId": f"in-{task_id}",
        "runAt": _NOW,
        "state": state,
        "attempts": 1,
        "maxAttempts": 5,
        "reruns": 0,
        "cancelRequested": False,
        "resultObjectId": None,
        "result": None,
        "error": None,
        "updatedAt": _NOW,
    }
    if leased:
        body |= {"leaseToken": f"lease-{task_id}", "leaseOwner": "w-1", "leaseExpiresAt": _NOW}
    return body


class _AI:
    """AI as the worker calls it: a queue of tasks leased ``maxTasks`` at a time; heartbeats,
    failures and bulk completions recorded."""

    service = "ai"

    def __init__(self, tasks: int) -> None:
        self.waiting = [f"t{n:02d}" for n in range(tasks)]
        self.all = list(self.waiting)
        self.leases: list[list[str]] = []  # each non-empty lease's task ids, in order
        self.heartbeats: set[str] = set()
        self.failed: list[str] = []
        self.completed: list[str] = []
        self.bulk_requests = 0
        self._batcher: Batcher[Any] | None = None

    async def fetch(self, into: type[M], method: str, path: str, **kw: Any) -> M:
        body = kw.get("json") or {}
        if path == "/v1/leases":
            got, self.waiting = self.waiting[: body["maxTasks"]], self.waiting[body["maxTasks"] :]
            if got:
                self.leases.append(got)
            return into.model_validate({"items": [_task(t, "running", leased=True) for t in got]})
        if path == "/v1/bulk/completions":
            self.bulk_requests += 1
            answers = []
            for item in body["items"]:
                self.completed.append(item["request"]["taskId"])
                done = _task(item["request"]["taskId"], "succeeded")
                answers.append({"key": item["key"], "status": 200, "body": done})
            return into.model_validate({"items": answers})
        task_id = path.split("/")[3]
        if path.endswith("/heartbeat"):
            self.heartbeats.add(task_id)
            return into.model_validate(_task(task_id, "running", leased=True))
        assert path.endswith("/fail"), path
        self.failed.append(task_id)
        return into.model_validate(_task(task_id, "scheduled"))

    def bulk(self, path: str, into: type[M]) -> Batcher[M]:
        if self._batcher is None:
            self._batcher = Batcher(self, path, into)  # type: ignore[arg-type]
        return self._batcher

    def leased(self) -> list[str]:
        return [task for lease in self.leases for task in lease]


class _Storage:
    """Storage as the worker calls it: inputs served, results stored, unless it is ``down``
    (every upload's connection reset) or ``hung`` (uploads never answer)."""

    service = "storage"

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.uploads: list[str] = []  # every attempt, by task
        self.contents: dict[str, bytes] = {}  # the bytes last uploaded, by task
        self.down = False
        self.hung = asyncio.Event()  # set: uploads wait for ``unhung``
        self.unhung = asyncio.Event()

    async def call(self, method: str, path: str, **_: Any) -> httpx.Response:
        assert method == "GET" and path.endswith("/content"), path
        self.fetched.append(path.split("/")[3].removeprefix("in-"))
        return httpx.Response(200, content=_INPUT)

    async def fetch(self, into: type[M], method: str, path: str, **kw: Any) -> M:
        """A bulk read of inputs (``POST /v1/bulk/contents``), or a single put
        (``PUT /v1/objects/{key}``) or a bulk one (``POST /v1/bulk/objects``): each result
        counted as one upload attempt either way."""
        if path == "/v1/bulk/contents":
            ids = kw["json"]["ids"]
            self.fetched += [object_id.removeprefix("in-") for object_id in ids]
            content = base64.b64encode(_INPUT).decode()
            return into.model_validate(
                {
                    "items": [
                        {
                            "key": object_id,
                            "status": 200,
                            "body": {
                                "id": object_id,
                                "sha256": "0" * 64,
                                "size": len(_INPUT),
                                "contentType": "image/png",
                                "content": content,
                            },
                        }
                        for object_id in ids
                    ]
                }
            )
        if path == "/v1/bulk/objects":
            items = json.loads(kw["data"]["items"])
            keys = [item["key"] for item in items]
            contents = [part[1][1] for part in kw["files"]]
        else:
            assert method == "PUT", (method, path)
            keys, contents = [path.removeprefix("/v1/objects/")], [kw["content"]]
        tasks = [key.rsplit(":", 1)[-1].removeprefix("job-") for key in keys]
        self.uploads += tasks
        self.contents.update(zip(tasks, contents, strict=True))
        if self.hung.is_set():
            await self.unhung.wait()
        if self.down:
            raise Ambiguous("storage", f"{method} {path}: connection reset", retry_after=0.0)
        stored = [
            _stored(task, key, content) for task, key, content in zip(tasks, keys, contents, strict=True)
        ]
        if path == "/v1/bulk/objects":
            return into.model_validate(
                {
                    "items": [
                        {"key": key, "status": 201, "body": body}
                        for key, body in zip(keys, stored, strict=True)
                    ]
                }
            )
        return into.model_validate(stored[0])


def _stored(task_id: str, key: str, content: bytes) -> dict[str, Any]:
    return {
        "id": f"obj-{task_id}",
        "key": key,
        "account": "acme",
        "jobId": f"job-{task_id}",
        "kind": "result",
        "sha256": "0" * 64,
        "size": len(content),
        "contentType": "image/png",
        "width": 6,
        "height": 4,
        "state": "committed",
        "createdAt": _NOW,
    }


class _Runner:
    """Inference that halves each image; the first batch waits for ``release`` when asked to."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def run(self, items: list[Item]) -> list[Item]:
        self.batches.append([item.key for item in items])
        if len(self.batches) == 1:
            assert self.release.wait(timeout=60), "the test never released the first batch"
        for item in items:
            item.output = item.image.float() / 510
        return items


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _running(
    tmp_path: Path, ai: _AI, storage: _Storage, runner: _Runner, pulse: Pulse | None = None, **settings: Any
) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    cfg = WorkerSettings(poll_seconds=0.01, **{"max_tasks": 2, "lease_seconds": 30, **settings})
    spool = Spool(tmp_path / "spool")
    worker = Worker(cfg, ai, storage, runner, spool, "w-1", pulse)  # type: ignore[arg-type]
    running = asyncio.create_task(worker.run())
    try:
        yield worker, running
    finally:
        runner.release.set()
        storage.down = False
        storage.unhung.set()
        worker.stopping.set()
        await asyncio.wait_for(running, 30)


async def test_the_next_batch_is_leased_and_fetched_while_this_one_infers(tmp_path: Path) -> None:
    ai, storage, runner = _AI(tasks=4), _Storage(), _Runner(hold_first=True)
    async with _running(tmp_path, ai, storage, runner, lease_seconds=5) as (worker, _):
        await _eventually(lambda: len(runner.batches) == 1, "first batch in inference")
        assert runner.batches == [["t00", "t01"]]
        await _eventually(lambda: {"t02", "t03"} <= set(storage.fetched), "second batch's inputs fetched")
        assert ai.leases == [["t00", "t01"], ["t02", "t03"]]  # leased while the first still infers
        # Held, so heartbeated like the batch inferring (every lease_seconds / 3).
        await _eventually(lambda: {"t02", "t03"} <= ai.heartbeats, "the prefetched tasks' heartbeats")
        assert ai.completed == [] and len(runner.batches) == 1
        runner.release.set()
        await _eventually(lambda: sorted(ai.completed) == ai.all, "every task completed")
        assert runner.batches == [["t00", "t01"], ["t02", "t03"]]
        assert ai.bulk_requests <= 2 and ai.failed == []
        await _eventually(lambda: not worker.spool.entries() and not worker.held, "spool emptied")


async def test_a_storage_outage_at_the_bound_of_deliveries_stops_leasing(tmp_path: Path) -> None:
    ai, storage, runner = _AI(tasks=20), _Storage(), _Runner()
    storage.down = True
    async with _running(tmp_path, ai, storage, runner, max_tasks=1, deliveries_in_flight=2) as (worker, _):
        # Two deliveries retry, a third batch is spooled and waits for a slot, a fourth is
        # prefetched: then the loop waits, and leases nothing more however long Storage is away.
        await _eventually(lambda: len(worker.spool.entries()) >= 3, "three results spooled")
        await _eventually(lambda: len(ai.leases) == 4, "the fourth batch prefetched")
        await _eventually(
            lambda: storage.uploads.count("t00") >= 3 and storage.uploads.count("t01") >= 3,
            "the stuck deliveries retried",
        )
        assert ai.leased() == ["t00", "t01", "t02", "t03"]
        assert runner.batches == [["t00"], ["t01"], ["t02"]]
        assert set(storage.uploads) == {"t00", "t01"}  # the third waits for a slot
        assert sorted(worker.held) == ["t00", "t01", "t02", "t03"]
        assert ai.completed == [] and ai.failed == []
        storage.down = False  # Storage is back: everything spooled and everything left is delivered
        await _eventually(lambda: sorted(ai.completed) == ai.all, "every task completed", timeout=30)
        assert ai.failed == [] and sorted(storage.fetched) == ai.all


async def test_sigterm_runs_the_prefetched_batch_and_leases_no_more(tmp_path: Path) -> None:
    ai, storage, runner = _AI(tasks=6), _Storage(), _Runner(hold_first=True)
    async with _running(tmp_path, ai, storage, runner) as (worker, running):
        await _eventually(lambda: {"t02", "t03"} <= set(storage.fetched), "second batch prefetched")
        worker.stopping.set()
        runner.release.set()
        await asyncio.wait_for(running, 30)  # it exits by itself
        assert sorted(ai.completed) == ["t00", "t01", "t02", "t03"]
        assert ai.failed == []  # nothing handed back: no attempt spent
        assert ai.waiting == ["t04", "t05"]  # never leased
        assert worker.spool.entries() == [] and worker.held == {}


async def test_sigterm_while_storage_is_away_exits_with_the_results_kept_in_the_spool(tmp_path: Path) -> None:
    ai, storage, runner = _AI(tasks=4), _Storage(), _Runner()
    storage.down = True
    async with _running(tmp_path, ai, storage, runner, shutdown_grace_seconds=0.5) as (worker, running):
        await _eventually(lambda: len(worker.spool.entries()) == 4, "every result spooled")
        worker.stopping.set()
        await asyncio.wait_for(running, 30)  # the deliveries gave up at the grace: it exits
        assert ai.completed == [] and ai.failed == []
        assert [entry.task_id for entry in worker.spool.entries()] == ai.all  # for the next start


async def test_a_hung_delivery_fails_liveness_while_the_loop_goes_round(tmp_path: Path) -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    pulse = Pulse(5.0, clock)
    ai, storage, runner = _AI(tasks=2), _Storage(), _Runner()
    storage.hung.set()
    async with _running(tmp_path, ai, storage, runner, pulse, lease_seconds=30):
        await _eventually(lambda: "delivery 1" in pulse.beats, "the delivery under way")
        await _eventually(lambda: storage.uploads == ["t00", "t01"], "the uploads sent")
        assert pulse.live().ok
        # The loop keeps polling for work (beating each time); the delivery's upload never answers.
        clock.now += 36.0  # past the upload's bound (one lease, 30 s) and the 5 s grace
        await _eventually(
            lambda: pulse.last_beat is not None and pulse.last_beat.at == clock.now, "loop beat"
        )
        verdict = pulse.live()
        assert not verdict.ok
        assert "delivery 1: wedged" in verdict.reason and "uploading 2 result(s)" in verdict.reason
        storage.unhung.set()  # it answers: the delivery ends, its lane with it, and all is well
        await _eventually(lambda: sorted(ai.completed) == ai.all, "every task completed")
        await _eventually(lambda: "delivery 1" not in pulse.beats, "the delivery's lane dropped")
        clock.now += 1.0
        await _eventually(
            lambda: pulse.last_beat is not None and pulse.last_beat.at == clock.now, "loop beat"
        )
        assert pulse.live().ok


@pytest.mark.parametrize(
    ("beats", "ok", "says"),
    [
        pytest.param({}, False, "starting", id="no-lane-yet-is-starting"),
        pytest.param(
            {
                LOOP: Beat(100.0, "running inference", 600.0),
                "prefetch": Beat(100.0, "fetching 8 input(s)", 60.0),
            },
            True,
            "running inference (20s ago); prefetch: fetching",
            id="all-lanes-within-their-bounds",
        ),
        pytest.param(
            {
                LOOP: Beat(100.0, "running inference", 600.0),
                "prefetch": Beat(40.0, "fetching 8 input(s)", 60.0),
            },
            False,
            "prefetch: wedged",
            id="a-hung-prefetch-beside-a-long-inference",
        ),
        pytest.param(
            {
                LOOP: Beat(0.0, "waiting for one of 2 deliveries in flight to end", float("inf")),
                "delivery 7": Beat(115.0, "pausing before a retry", 10.0),
            },
            True,
            "delivery 7: pausing",
            id="a-loop-waiting-on-a-delivery-that-retries",
        ),
        pytest.param(
            {
                LOOP: Beat(50.0, "waiting between lease polls", 0.5),
                "delivery 1": Beat(119.0, "uploading", 60.0),
            },
            False,
            "wedged",
            id="a-wedged-loop-beside-a-live-delivery",
        ),
    ],
)
def test_liveness_asks_every_lane(beats: dict[str, Beat], ok: bool, says: str) -> None:
    verdict = liveness_of_lanes(beats, 120.0, 10.0)
    assert verdict.ok is ok
    assert says in verdict.reason


class _Releasing(_AI):
    """AI that leases t00, then t00 again under a new lease (the first ran out while the worker
    inferred, slowed down, and AI gave the task to the next poll: this worker's prefetch). The
    lease tokens sent with each completion and failure are kept."""

    def __init__(self) -> None:
        super().__init__(tasks=1)
        self.script = [["t00"], ["t00"]]
        self.tokens: dict[str, list[str]] = {"complete": [], "fail": []}

    async def fetch(self, into: type[M], method: str, path: str, **kw: Any) -> M:
        body = kw.get("json") or {}
        if path == "/v1/leases":
            got = self.script.pop(0) if self.script else []
            if not got:
                return into.model_validate({"items": []})
            self.leases.append(got)
            n = len(self.leases) - 1
            items = [_task(t, "running", leased=True) | {"leaseToken": f"lease-{t}-{n}"} for t in got]
            return into.model_validate({"items": items})
        if path == "/v1/bulk/completions":
            self.tokens["complete"] += [item["request"]["leaseToken"] for item in body["items"]]
        elif path.endswith("/fail"):
            self.tokens["fail"].append(body["leaseToken"])
        return await super().fetch(into, method, path, **kw)


class _FetchOnce(_Storage):
    """Storage whose second read of an input fails: the re-leased task's input cannot be fetched."""

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self.fetched:
            raise Ambiguous("storage", f"{method} {path}: connection reset")
        return await super().call(method, path, **kw)


async def test_a_task_leased_again_while_it_infers_is_finished_under_the_lease_it_ran_under(
    tmp_path: Path,
) -> None:
    ai, storage, runner = _Releasing(), _FetchOnce(), _Runner(hold_first=True)
    async with _running(tmp_path, ai, storage, runner, max_tasks=1) as (worker, running):
        await _eventually(lambda: runner.batches == [["t00"]], "the first lease in inference")
        # The second lease of t00 cannot fetch its input: handed back under its own token.
        await _eventually(lambda: ai.tokens["fail"] == ["lease-t00-1"], "the second lease handed back")
        runner.release.set()
        # The first run is spooled and completed under the lease it ran under (AI fences it by
        # that token): the worker neither stops nor hands the task back twice.
        await _eventually(lambda: ai.tokens["complete"] == ["lease-t00-0"], "the first run completed")
        assert not running.done(), running
        await _eventually(lambda: not worker.spool.entries() and not worker.held, "spool emptied")
        assert ai.failed == ["t00"] and storage.uploads == ["t00"]


class _Distinct(_Storage):
    """Storage whose inputs differ by task (each a flat image of its own shade), one of them no
    image at all."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def input_of(self, task_id: str) -> bytes:
        if task_id == self.bad:
            return b"this is no image"
        return codec.encode(torch.full((3, 4, 6), int(task_id.removeprefix("t")) / 20))

    async def call(self, method: str, path: str, **_: Any) -> httpx.Response:
        """A single input's read (a lease of one)."""
        assert method == "GET" and path.endswith("/content"), path
        task_id = path.split("/")[3].removeprefix("in-")
        self.fetched.append(task_id)
        return httpx.Response(200, content=self.input_of(task_id))

    async def fetch(self, into: type[M], method: str, path: str, **kw: Any) -> M:
        if path != "/v1/bulk/contents":
            return await super().fetch(into, method, path, **kw)
        ids = kw["json"]["ids"]
        self.fetched += [object_id.removeprefix("in-") for object_id in ids]
        items = []
        for object_id in ids:
            data = self.input_of(object_id.removeprefix("in-"))
            content = {"id": object_id, "sha256": "0" * 64, "size": len(data), "contentType": "image/png"}
            body = content | {"content": base64.b64encode(data).decode()}
            items.append({"key": object_id, "status": 200, "body": body})
        return into.model_validate({"items": items})


async def test_each_result_is_made_from_its_own_input_and_an_undecodable_one_fails_alone(
    tmp_path: Path,
) -> None:
    """A lease's images go through the codec pool in a few runs of neighbours (the first lease
    is 8; 7 once the bad one is out, so runs of 2, 2, 2 and 1 on 4 threads): every task's result
    is made from its own input, whatever run it was in, and the one input that is no image fails
    alone."""
    ai, storage, runner = _AI(tasks=9), _Distinct(bad="t04"), _Runner()
    async with _running(tmp_path, ai, storage, runner, max_tasks=9) as (worker, _):
        await _eventually(lambda: len(ai.completed) == 8, "eight results completed")
        await _eventually(lambda: not worker.spool.entries(), "spool emptied")
    assert ai.leases[0] == [f"t{n:02d}" for n in range(8)]
    assert ai.failed == ["t04"]
    ran = [task for batch in runner.batches for task in batch]
    assert ran == [f"t{n:02d}" for n in range(9) if n != 4]
    assert sorted(ai.completed) == ran
    for task in ran:
        made = codec.decode(storage.input_of(task)).float() / 510  # what the fake runner does
        assert storage.contents[task] == codec.encode(made), task
