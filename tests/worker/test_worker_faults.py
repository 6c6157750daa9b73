"""The worker as a process against real AI and Storage services: a finished result survives a
Storage outage and a crash, a killed worker's task is run again with one result, and graceful
shutdown hands back what it holds."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aijobs_dev.testbed.stack import Stack
from PIL import Image

from tests.e2e.conftest import eventually, make_stack, png


@pytest.fixture(scope="module")
def services(control_plane: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(control_plane, postgres, tmp_path_factory)
    try:
        yield stack
    finally:
        stack.stop()


def _task(
    stack: Stack, pipeline: str = "grayscale", image: bytes | None = None, **params: Any
) -> dict[str, Any]:
    job = f"job-{uuid.uuid4().hex[:10]}"
    with stack.admin("storage") as http:
        obj = http.put(
            f"/v1/objects/in:{job}",
            params={"account": "acme", "jobId": job, "state": "committed"},
            content=image or png(32, 24),
        ).json()
    return stack.call(
        "ai",
        "POST",
        "/v1/tasks",
        {"jobId": job, "account": "acme", "pipeline": pipeline, "params": params, "inputObjectId": obj["id"]},
    )


def _state(stack: Stack, task: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = stack.call("ai", "GET", f"/v1/tasks/{task['id']}")
    return state


def _results(stack: Stack, task: dict[str, Any]) -> list[dict[str, Any]]:
    items = stack.call("storage", "GET", f"/v1/jobs/{task['jobId']}/objects")["items"]
    return [o for o in items if o["kind"] == "result" and o["state"] != "deleted"]


def test_a_result_waits_in_the_spool_while_storage_is_down_then_is_delivered(
    services: Stack, tmp_path: Path
) -> None:
    stack = services
    spool = tmp_path / "spool"
    stack.faults(
        "storage", [{"action": "reset", "method": "PUT", "path": "^/v1/objects/result:", "name": "down"}]
    )
    worker = stack.start_worker(AIJOBS_SPOOL_DIR=str(spool))
    try:
        task = _task(stack)
        eventually(lambda: list(spool.glob("*.batch")), 60, "the result spooled")
        assert _state(stack, task)["state"] == "running"  # heartbeats keep the lease
        stack.faults("storage", [])
        done = eventually(lambda: (s := _state(stack, task))["state"] == "succeeded" and s, 60, "completion")
        assert list(spool.iterdir()) == []
        [result] = _results(stack, task)
        assert done["resultObjectId"] == result["id"]
    finally:
        stack.faults("storage", [])
        worker.stop()


def test_a_worker_killed_after_spooling_uploads_its_spool_on_restart(services: Stack, tmp_path: Path) -> None:
    stack = services
    spool = tmp_path / "spool"
    stack.faults("storage", [{"action": "reset", "method": "PUT", "path": "^/v1/objects/result:"}])
    worker = stack.start_worker(AIJOBS_SPOOL_DIR=str(spool))
    task = _task(stack)
    eventually(lambda: list(spool.glob("*.batch")), 60, "the result spooled")
    worker.kill()  # the finished result exists only in the spool now
    stack.faults("storage", [])
    restarted = stack.start_worker(AIJOBS_SPOOL_DIR=str(spool))
    try:
        eventually(lambda: _state(stack, task)["state"] == "succeeded", 60, "completion after restart")
        assert len(_results(stack, task)) == 1 and list(spool.iterdir()) == []
    finally:
        restarted.stop()


def test_a_worker_killed_mid_task_loses_its_lease_and_another_runs_it_once(
    services: Stack, tmp_path: Path
) -> None:
    stack = services
    # The first worker stalls fetching the input, holding the lease; then it dies.
    stack.faults(
        "storage", [{"action": "delay", "method": "GET", "path": "/content$", "seconds": 30, "times": 1}]
    )
    first = stack.start_worker(AIJOBS_SPOOL_DIR=str(tmp_path / "a"), AIJOBS_LEASE_SECONDS="5")
    task = _task(stack)
    eventually(lambda: _state(stack, task)["state"] == "running", 30, "the first worker leased it")
    eventually(
        lambda: any(e["action"] == "delay" for e in stack.fault_log("storage")), 30, "the fetch stalls"
    )
    first.kill()
    stack.faults("storage", [])
    second = stack.start_worker(AIJOBS_SPOOL_DIR=str(tmp_path / "b"), AIJOBS_LEASE_SECONDS="5")
    try:
        done = eventually(lambda: (s := _state(stack, task))["state"] == "succeeded" and s, 60, "rerun")
        assert done["reruns"] == 1 and done["attempts"] == 2
        assert len(_results(stack, task)) == 1
    finally:
        second.stop()


def test_a_task_whose_pipeline_fails_is_failed_for_good_and_others_succeed(
    services: Stack, tmp_path: Path
) -> None:
    stack = services
    good = [_task(stack) for _ in range(2)]
    bad = _task(stack, "user-model", model="missing.pt")
    worker = stack.start_worker(AIJOBS_SPOOL_DIR=str(tmp_path / "s"), AIJOBS_MAX_TASKS="8")
    try:
        for task in good:
            eventually(lambda t=task: _state(stack, t)["state"] == "succeeded", 60, "good tasks succeed")
        failed = eventually(
            lambda: (s := _state(stack, bad))["state"] == "failed" and s, 60, "bad task fails"
        )
        assert "no model folder" in failed["error"] or "missing.pt" in failed["error"]
        assert failed["attempts"] == 1  # not retried: retrying can't help
    finally:
        worker.stop()


def test_the_result_is_the_processed_image(services: Stack, tmp_path: Path) -> None:
    stack = services
    task = _task(stack, "upscale-x2", image=png(24, 16))
    worker = stack.start_worker(AIJOBS_SPOOL_DIR=str(tmp_path / "s"))
    try:
        done = eventually(lambda: (s := _state(stack, task))["state"] == "succeeded" and s, 60, "upscale")
    finally:
        worker.stop()
    with stack.admin("storage") as http:
        content = http.get(f"/v1/objects/{done['resultObjectId']}/content").content
    assert Image.open(io.BytesIO(content)).size == (48, 32)


def test_sigterm_hands_back_leased_work_and_exits(services: Stack, tmp_path: Path) -> None:
    stack = services
    stack.faults("storage", [{"action": "delay", "method": "GET", "path": "/content$", "seconds": 3}])
    worker = stack.start_worker(AIJOBS_SPOOL_DIR=str(tmp_path / "s"), AIJOBS_SHUTDOWN_GRACE_SECONDS="20")
    try:
        task = _task(stack)
        eventually(lambda: _state(stack, task)["state"] == "running", 30, "leased")
        proc = worker.proc
        assert proc is not None
        worker.stop(timeout=60)
        assert proc.returncode == 0  # it exited by itself on SIGTERM (a SIGKILL after the wait is -9)
        assert any(e["action"] == "delay" for e in stack.fault_log("storage"))  # the fetch was slowed
        # It finished what it had started (a fetched input is processed and delivered).
        assert _state(stack, task)["state"] == "succeeded"
    finally:
        stack.faults("storage", [])
    assert httpx.get(stack.services["ai"].url + "/healthz").status_code == 200
