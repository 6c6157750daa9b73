"""A worker completes the results of a leased batch in one request to the real AI service (in
process, on the throwaway PostgreSQL), each under the key its single completion has always had:
a lost answer is sent again with the same items and nothing happens twice; a completion refused
because the lease was taken over drops that run alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from aijobs_dev.testbed.processes import make_secrets
from aijobs_services.kit.app import create_app
from aijobs_services.kit.settings import ServiceSettings
from aijobs_services.registry import spec
from aijobs_worker.config import WorkerSettings
from aijobs_worker.loop import Worker
from aijobs_worker.runner import Runner
from aijobs_worker.spool import Entry, Spool
from fastapi import FastAPI

from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner

pytestmark = pytest.mark.postgres

AI = tuple[FastAPI, dict[str, str]]


class Wire(httpx.AsyncBaseTransport):
    """The AI app behind a transport that counts requests by path and can lose the answer of
    the first bulk completion (the service acts, the worker hears nothing)."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.paths: list[str] = []
        self.lose_next_bulk_answer = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v1/bulk/completions" and self.lose_next_bulk_answer:
            self.lose_next_bulk_answer = False
            await response.aread()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def _storage(request: httpx.Request) -> httpx.Response:
    """Storage, as far as a worker's upload needs it."""
    digest = hashlib.sha256(request.content).hexdigest()
    key = request.url.path.rsplit("/", 1)[-1]
    return httpx.Response(
        200,
        json={
            "id": f"obj-{digest[:12]}",
            "key": key,
            "account": "acme",
            "jobId": request.url.params.get("jobId"),
            "kind": "result",
            "sha256": digest,
            "size": len(request.content),
            "contentType": "image/png",
            "width": 1,
            "height": 1,
            "state": "committed",
            "createdAt": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


@pytest.fixture
def ai(pg_url: str) -> Iterator[AI]:
    secrets = make_secrets()
    settings = ServiceSettings(service="ai", database_url=pg_url, callers=secrets, sweep_interval_seconds=0)
    app = create_app(spec("ai"), settings)
    yield app, secrets
    app.state.engine.dispose()


async def _scenario(
    app: FastAPI, secrets: dict[str, str], spool_dir: Path, *, lose_answer: bool, stale: int | None
) -> tuple[Wire, list[dict[str, Any]], Spool]:
    wire = Wire(app)
    wire.lose_next_bulk_answer = lose_answer
    operator = ServiceClient("ai", "http://ai", TokenSigner("operator", secrets["operator"]), transport=wire)
    ai = ServiceClient("ai", "http://ai", TokenSigner("worker", secrets["worker"]), transport=wire)
    storage = ServiceClient(
        "storage",
        "http://storage",
        TokenSigner("worker", secrets["worker"]),
        transport=httpx.MockTransport(_storage),
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
        spool.put(entry, f"result {n}".encode())
        entries.append(entry)
    wire.paths.clear()
    await worker.deliver(entries)
    states = [(await operator.call("GET", f"/v1/tasks/{t.id}")).json() for t in leased]
    for client in (operator, ai, storage):
        await client.aclose()
    return wire, states, spool


def test_a_leased_batch_is_completed_in_one_request(ai: AI, tmp_path: Path) -> None:
    wire, states, spool = asyncio.run(_scenario(*ai, tmp_path, lose_answer=False, stale=None))
    assert wire.paths.count("/v1/bulk/completions") == 1
    assert not any(p.endswith("/complete") for p in wire.paths)
    assert [s["state"] for s in states] == ["succeeded"] * 3
    assert spool.entries() == []


def test_a_lost_answer_is_sent_again_with_the_same_items_and_acts_once(ai: AI, tmp_path: Path) -> None:
    wire, states, spool = asyncio.run(_scenario(*ai, tmp_path, lose_answer=True, stale=None))
    assert wire.paths.count("/v1/bulk/completions") == 2  # the lost one, and its retry
    assert [s["state"] for s in states] == ["succeeded"] * 3
    assert [s["attempts"] for s in states] == [1, 1, 1]
    assert spool.entries() == []


def test_a_completion_refused_for_a_lost_lease_drops_that_run_alone(ai: AI, tmp_path: Path) -> None:
    wire, states, spool = asyncio.run(_scenario(*ai, tmp_path, lose_answer=False, stale=1))
    assert wire.paths.count("/v1/bulk/completions") == 1
    assert [s["state"] for s in states] == ["succeeded", "running", "succeeded"]
    assert spool.entries() == []  # the refused run is forgotten, not retried
