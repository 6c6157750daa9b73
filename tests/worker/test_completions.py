"""A worker completes the results of a leased batch in one request to the real AI service (in
process, on the throwaway PostgreSQL), each under the key its single completion has always had:
a lost answer is sent again with the same items and nothing happens twice; a completion refused
because the lease was taken over drops that run alone."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import torch
from aijobs_dev.testbed.processes import make_secrets
from aijobs_services.kit.app import create_app
from aijobs_services.kit.settings import ServiceSettings
from aijobs_services.registry import spec
from aijobs_services.storage.settings import StorageSettings
from aijobs_worker import codec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.loop import Worker
from aijobs_worker.runner import Runner
from aijobs_worker.spool import Entry, Spool
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner

pytestmark = pytest.mark.postgres

AI = tuple[FastAPI, dict[str, str]]
SECRETS = make_secrets()


class Wire(httpx.AsyncBaseTransport):
    """A service's app behind a transport that counts requests by path and can lose the answer
    of the first request to ``lose`` (the service acts, the worker hears nothing)."""

    def __init__(self, app: FastAPI, lose: str | None = None) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.paths: list[str] = []
        self.lose = lose

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = await self.inner.handle_async_request(request)
        if request.url.path == self.lose:
            self.lose = None
            await response.aread()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def _result(n: int) -> bytes:
    """A small PNG, different for each ``n`` (Storage stores only images it decodes)."""
    return codec.encode(torch.full((3, 4, 6), n / 10))


@pytest.fixture
def storage_app(tmp_path: Path) -> Iterator[FastAPI]:
    """The real Storage, in process, on SQLite (its one-machine database)."""
    settings = StorageSettings(
        service="storage",
        database_url=f"sqlite:///{tmp_path / 'storage.db'}",
        callers=SECRETS,
        storage_root=str(tmp_path / "volume"),
        sweep_interval_seconds=0,
    )
    app = create_app(spec("storage"), settings)
    with TestClient(app):  # runs its startup: migrations, the blob volume
        yield app
    app.state.engine.dispose()


@pytest.fixture
def ai(pg_url: str) -> Iterator[AI]:
    secrets = SECRETS
    settings = ServiceSettings(service="ai", database_url=pg_url, callers=secrets, sweep_interval_seconds=0)
    app = create_app(spec("ai"), settings)
    yield app, secrets
    app.state.engine.dispose()


async def _scenario(
    app: FastAPI,
    secrets: dict[str, str],
    storage_app: FastAPI,
    spool_dir: Path,
    *,
    lose_answer: bool = False,
    lose_upload: bool = False,
    stale: int | None = None,
    damaged: int | None = None,
) -> tuple[Wire, Wire, list[dict[str, Any]], Spool]:
    wire = Wire(app, "/v1/bulk/completions" if lose_answer else None)
    storage_wire = Wire(storage_app, "/v1/bulk/objects" if lose_upload else None)
    operator = ServiceClient("ai", "http://ai", TokenSigner("operator", secrets["operator"]), transport=wire)
    ai = ServiceClient("ai", "http://ai", TokenSigner("worker", secrets["worker"]), transport=wire)
    storage = ServiceClient(
        "storage",
        "http://storage",
        TokenSigner("worker", secrets["worker"]),
        transport=storage_wire,
    )
    cfg = WorkerSettings(spool_dir=str(spool_dir), max_tasks=3, lease_seconds=30)
    spool = Spool(spool_dir)
    worker = Worker(cfg, ai, storage, Runner(torch.device("cpu")), spool, "w1")
    for i in range(3):
        body = {"jobId": f"job-{i}", "account": "acme", "pipeline": "grayscale", "inputObjectId": "in"}
        await operator.call("POST", "/v1/tasks", key=f"job-{i}", json=body)
    leased = await worker._lease()
    spooled = []
    for n, task in enumerate(leased):
        token = "taken-over" if n == stale else worker.held[task.id].lease_token
        encoded = _result(n)  # what the encoder made, and its digest, taken before it was spooled
        entry = Entry(
            task.id, task.job_id, task.account, token, {}, sha256=hashlib.sha256(encoded).hexdigest()
        )
        spooled.append((entry, encoded[:-10] if n == damaged else encoded))
    spool.put_many(spooled)  # the batch's results in one segment, as the worker spools them
    entries = [entry for entry, _ in spooled]
    wire.paths.clear()
    storage_wire.paths.clear()
    await worker.deliver(entries)
    states = [(await operator.call("GET", f"/v1/tasks/{t.id}")).json() for t in leased]
    for client in (operator, ai, storage):
        await client.aclose()
    return wire, storage_wire, states, spool


def test_a_leased_batch_is_stored_in_one_request_and_completed_in_one_request(
    ai: AI, storage_app: FastAPI, tmp_path: Path
) -> None:
    wire, storage, states, spool = asyncio.run(_scenario(*ai, storage_app, tmp_path / "spool"))
    assert storage.paths == ["/v1/bulk/objects"]
    assert wire.paths.count("/v1/bulk/completions") == 1
    assert not any(p.endswith("/complete") for p in wire.paths)
    assert [s["state"] for s in states] == ["succeeded"] * 3
    assert spool.entries() == []


def test_a_lost_answer_is_sent_again_with_the_same_items_and_acts_once(
    ai: AI, storage_app: FastAPI, tmp_path: Path
) -> None:
    wire, _, states, spool = asyncio.run(_scenario(*ai, storage_app, tmp_path / "spool", lose_answer=True))
    assert wire.paths.count("/v1/bulk/completions") == 2  # the lost one, and its retry
    assert [s["state"] for s in states] == ["succeeded"] * 3
    assert [s["attempts"] for s in states] == [1, 1, 1]
    assert spool.entries() == []


def test_a_completion_refused_for_a_lost_lease_drops_that_run_alone(
    ai: AI, storage_app: FastAPI, tmp_path: Path
) -> None:
    wire, _, states, spool = asyncio.run(_scenario(*ai, storage_app, tmp_path / "spool", stale=1))
    assert wire.paths.count("/v1/bulk/completions") == 1
    assert [s["state"] for s in states] == ["succeeded", "running", "succeeded"]
    assert spool.entries() == []  # the refused run is forgotten, not retried


def test_a_lost_upload_answer_is_sent_again_and_stores_each_result_once(
    ai: AI, storage_app: FastAPI, tmp_path: Path
) -> None:
    """Storage stored the batch's results but the worker never heard: the same request again
    finds each key holding these bytes (200, the first object), and each task completes with it."""
    _, storage, states, spool = asyncio.run(_scenario(*ai, storage_app, tmp_path / "spool", lose_upload=True))
    assert storage.paths == ["/v1/bulk/objects", "/v1/bulk/objects"]
    assert [s["state"] for s in states] == ["succeeded"] * 3
    with storage_app.state.engine.connect() as db:
        stored = db.execute(sa.text("SELECT key, id FROM objects ORDER BY key")).all()
    assert [key for key, _ in stored] == [f"result:job-{i}" for i in range(3)]
    assert sorted(s["resultObjectId"] for s in states) == sorted(oid for _, oid in stored)
    assert spool.entries() == []


def test_a_result_damaged_in_the_spool_is_refused_and_its_task_run_again(
    ai: AI, storage_app: FastAPI, tmp_path: Path
) -> None:
    """The spool file of one result lost its last bytes on the worker's disk: its bytes no longer
    hash to the digest its encoder took, so Storage refuses them (nothing is stored under its
    key) and the task is handed back to be run again; the others are delivered."""
    _, _, states, spool = asyncio.run(_scenario(*ai, storage_app, tmp_path / "spool", damaged=1))
    assert [s["state"] for s in states] == ["succeeded", "scheduled", "succeeded"]
    assert "digest" in states[1]["error"]
    with storage_app.state.engine.connect() as db:
        stored = db.execute(sa.text("SELECT key FROM objects ORDER BY key")).scalars().all()
    assert stored == ["result:job-0", "result:job-2"]
    assert spool.entries() == []


async def _restarted(app: FastAPI, secrets: dict[str, str], spool_dir: Path) -> tuple[list[str], list[str]]:
    """A worker leases, then its process restarts (the same worker id, a container restarted
    in its pod) and, having measured a different pace, leases again: the tasks each run got."""
    ai = ServiceClient("ai", "http://ai", TokenSigner("worker", secrets["worker"]), transport=Wire(app))
    operator = ServiceClient(
        "ai", "http://ai", TokenSigner("operator", secrets["operator"]), transport=Wire(app)
    )
    for i in range(6):
        body = {"jobId": f"job-{i}", "account": "acme", "pipeline": "grayscale", "inputObjectId": "in"}
        await operator.call("POST", "/v1/tasks", key=f"job-{i}", json=body)
    cfg = WorkerSettings(spool_dir=str(spool_dir), max_tasks=4, lease_seconds=30)
    first = Worker(cfg, ai, ai, Runner(torch.device("cpu")), Spool(spool_dir), "w1")  # type: ignore[arg-type]
    before = [task.id for task in await first._lease()]
    again = Worker(cfg, ai, ai, Runner(torch.device("cpu")), Spool(spool_dir), "w1")  # type: ignore[arg-type]
    again.sizer.observe(1.0, 1)  # the model loading
    again.sizer.observe(0.3, 1)  # 0.3 s an image: two to a lease
    after = [task.id for task in await again._lease()]
    for client in (operator, ai):
        await client.aclose()
    return before, after


def test_a_restarted_worker_leases_anew_under_keys_of_its_own(ai: AI, tmp_path: Path) -> None:
    """Its lease count starts again at a restart: a key of the run before would replay that
    run's tasks, or be refused as reused now that it asks for another size (the worker stopped)."""
    before, after = asyncio.run(_restarted(*ai, tmp_path / "spool"))
    assert len(before) == 4 and len(after) == 2
    assert not set(before) & set(after)


async def _fetching(
    app: FastAPI, secrets: dict[str, str], storage_app: FastAPI, spool_dir: Path, lose: bool, missing: str
) -> tuple[Wire, list[str], list[tuple[str, torch.Tensor]], list[dict[str, Any]]]:
    """Three tasks leased, two of whose inputs are stored (the third's object, ``missing``, does not exist),
    then gathered by the worker: the storage paths it called, the stored inputs' digests by task,
    the images it decoded, and the tasks' states after."""
    wire = Wire(app)
    storage_wire = Wire(storage_app, "/v1/bulk/contents" if lose else None)
    operator = ServiceClient("ai", "http://ai", TokenSigner("operator", secrets["operator"]), transport=wire)
    ai = ServiceClient("ai", "http://ai", TokenSigner("worker", secrets["worker"]), transport=wire)
    storage = ServiceClient(
        "storage", "http://storage", TokenSigner("worker", secrets["worker"]), transport=storage_wire
    )
    uploader = ServiceClient(
        "storage", "http://storage", TokenSigner("operator", secrets["operator"]), transport=storage_wire
    )
    inputs = []
    for i in range(2):
        params = {"account": "acme", "kind": "input", "state": "committed"}
        stored = await uploader.call("PUT", f"/v1/objects/in-{i}", params=params, content=_result(i + 1))
        inputs.append(stored.json()["id"])
    inputs.append(missing)
    for i, object_id in enumerate(inputs):
        body = {"jobId": f"job-{i}", "account": "acme", "pipeline": "grayscale", "inputObjectId": object_id}
        await operator.call("POST", "/v1/tasks", key=f"job-{i}", json=body)
    cfg = WorkerSettings(spool_dir=str(spool_dir), max_tasks=3, lease_seconds=30)
    worker = Worker(cfg, ai, storage, Runner(torch.device("cpu")), Spool(spool_dir), "w1")
    storage_wire.paths.clear()
    batch = await worker._gather()
    job_of = {task_id: task.job_id for task_id, task in batch.tasks.items()}
    decoded = sorted((job_of[item.key], item.image) for item in batch.items)
    states = [(await operator.call("GET", f"/v1/tasks/{t}")).json() for t in sorted(batch.tasks)]
    for client in (operator, ai, storage, uploader):
        await client.aclose()
    return storage_wire, inputs, decoded, states


@pytest.mark.parametrize(
    ("lose", "missing", "read"),
    [
        pytest.param(False, "obj-missing", "together", id="answered"),
        pytest.param(True, "obj-missing", "lost", id="answer-lost"),
        pytest.param(False, "no such id!", "alone", id="an-id-no-object-has"),
    ],
)
def test_a_leases_inputs_are_read_in_one_request_and_each_unreadable_one_is_handed_back(
    ai: AI, storage_app: FastAPI, tmp_path: Path, lose: bool, missing: str, read: str
) -> None:
    """Each stored input is decoded as its bytes say; the one whose object does not exist is
    handed back (retryable: it may be an input's late commit) and the others go on. A lost answer
    to the bulk read costs one single read per input, not the batch; so does an id no object
    could have (AI takes any), which the bulk read's request would refuse."""
    storage, inputs, decoded, states = asyncio.run(
        _fetching(*ai, storage_app, tmp_path / "spool", lose, missing)
    )
    single = [f"/v1/objects/{object_id}/content" for object_id in inputs]
    expected = {
        "together": ["/v1/bulk/contents", single[2]],
        "lost": ["/v1/bulk/contents", *single],
        "alone": single,
    }
    assert storage.paths == expected[read]
    assert [job for job, _ in decoded] == ["job-0", "job-1"]
    for n, (_, image) in enumerate(decoded):
        assert torch.equal(image, codec.decode(_result(n + 1)))
    by_job = {state["jobId"]: state for state in states}
    assert [by_job[f"job-{i}"]["state"] for i in range(3)] == ["running", "running", "scheduled"]
    assert "could not fetch the input" in by_job["job-2"]["error"]
