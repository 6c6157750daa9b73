"""A worker completes the results of a leased batch in one request to the real AI service (in
process, on the throwaway PostgreSQL), each under the key its single completion has always had:
a lost answer is sent again with the same items and nothing happens twice; a completion refused
because the lease was taken over drops that run alone."""

from __future__ import annotations

import asyncio
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
    entries = []
    for n, task in enumerate(leased):
        token = "taken-over" if n == stale else worker.held[task.id].lease_token
        entry = Entry(task.id, task.job_id, task.account, token, {})
        spool.put(entry, _result(n))
        entries.append(entry)
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
    _, storage, states, spool = asyncio.run(
        _scenario(*ai, storage_app, tmp_path / "spool", lose_upload=True)
    )
    assert storage.paths == ["/v1/bulk/objects", "/v1/bulk/objects"]
    assert [s["state"] for s in states] == ["succeeded"] * 3
    with storage_app.state.engine.connect() as db:
        stored = db.execute(sa.text("SELECT key, id FROM objects ORDER BY key")).all()
    assert [key for key, _ in stored] == [f"result:job-{i}" for i in range(3)]
    assert sorted(s["resultObjectId"] for s in states) == sorted(oid for _, oid in stored)
    assert spool.entries() == []
