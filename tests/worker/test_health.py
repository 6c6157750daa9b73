"""The worker's probes: /healthz fails once the loop stops going round for longer than its stage
may take, /readyz also while the AI service does not answer lease polls; served beside /metrics
on the metrics port, from a thread that answers while the loop is stuck."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import Beat, Poll, Pulse, liveness, readiness
from aijobs_worker.loop import Worker
from aijobs_worker.spool import Spool
from aijobs_worker.telemetry import REGISTRY
from pydantic import BaseModel

from aijobs.health import Verdict, start_probe_server
from aijobs.wire.client import Ambiguous

GRACE = 10.0


@pytest.mark.parametrize(
    ("beat", "now", "ok", "says"),
    [
        pytest.param(None, 100.0, False, "starting", id="no-beat-yet-is-starting"),
        pytest.param(
            Beat(100.0, "waiting between lease polls", 0.5), 100.2, True, "waiting", id="idle-fresh"
        ),
        pytest.param(Beat(100.0, "waiting", 0.5), 110.5, True, "waiting", id="idle-at-the-grace-edge"),
        pytest.param(Beat(100.0, "waiting", 0.5), 111.0, False, "wedged", id="idle-past-the-grace"),
        pytest.param(Beat(100.0, "running inference", 600.0), 650.0, True, "inference", id="long-inference"),
        pytest.param(Beat(100.0, "running inference", 600.0), 711.0, False, "wedged", id="inference-hung"),
        pytest.param(Beat(100.0, "polling", 30.0), 135.0, True, "polling", id="slow-lease-call"),
        pytest.param(Beat(100.0, "pausing before a retry", 60.0), 165.0, True, "pausing", id="backoff"),
        pytest.param(
            Beat(100.0, "pausing before a retry", 60.0), 171.0, False, "wedged", id="backoff-overrun"
        ),
    ],
)
def test_liveness(beat: Beat | None, now: float, ok: bool, says: str) -> None:
    verdict = liveness(beat, now, GRACE)
    assert verdict.ok is ok
    assert says in verdict.reason


@pytest.mark.parametrize(
    ("beat", "poll", "now", "ok", "says"),
    [
        pytest.param(None, None, 100.0, False, "starting", id="starting"),
        pytest.param(Beat(99.0, "polling", 30.0), None, 100.0, False, "no lease poll", id="no-poll-yet"),
        pytest.param(Beat(99.0, "waiting", 0.5), Poll(99.0, True), 100.0, True, "answered", id="polled"),
        pytest.param(
            Beat(99.0, "pausing", 5.0),
            Poll(99.0, False, "ai: connect refused"),
            100.0,
            False,
            "refused",
            id="ai-unreachable",
        ),
        pytest.param(
            Beat(100.0, "running inference", 600.0),
            Poll(100.0, True),
            400.0,
            True,
            "answered",
            id="busy-worker-stays-ready",
        ),
        pytest.param(
            Beat(50.0, "waiting", 0.5), Poll(50.0, True), 100.0, False, "wedged", id="wedged-is-unready"
        ),
    ],
)
def test_readiness(beat: Beat | None, poll: Poll | None, now: float, ok: bool, says: str) -> None:
    verdict = readiness(beat, poll, now, GRACE)
    assert verdict.ok is ok
    assert says in verdict.reason


def test_probes_answer_beside_metrics_with_the_reason() -> None:
    verdicts = {"/healthz": Verdict(True, "waiting"), "/readyz": Verdict(False, "no lease poll answered yet")}
    server = start_probe_server(
        0, REGISTRY, {"/healthz": lambda: verdicts["/healthz"], "/readyz": lambda: verdicts["/readyz"]}
    )
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        unready = httpx.get(f"{base}/readyz")
        assert unready.status_code == 503
        assert unready.json() == {"status": "failing", "reason": "no lease poll answered yet"}
        assert "aijobs_worker_images_total" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/nothing").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


M = TypeVar("M", bound=BaseModel)


class _AI:
    """The AI service as the loop sees it: no work, or no answer."""

    def __init__(self) -> None:
        self.down = False

    async def fetch(self, into: type[M], method: str, path: str, **_: Any) -> M:
        assert (method, path) == ("POST", "/v1/leases")
        if self.down:
            raise Ambiguous("ai", "POST /v1/leases: connection refused", retry_after=0.01)
        return into.model_validate({"items": []})


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        await asyncio.sleep(0.01)


async def _with_worker(tmp_path: Path, body: Callable[[Worker, _AI, _Clock], Awaitable[None]]) -> None:
    clock, ai = _Clock(), _AI()
    cfg = WorkerSettings(
        poll_seconds=0.01,
        stall_grace_seconds=5.0,
        wedge_file=str(tmp_path / "wedge"),
        call_timeout_seconds=1.0,
    )
    worker = Worker(cfg, ai, ai, None, Spool(tmp_path / "spool"), "w-1", Pulse(5.0, clock))  # type: ignore[arg-type]
    running = asyncio.create_task(worker.run())
    try:
        await body(worker, ai, clock)
    finally:
        worker.wedge_release.set()
        worker.stopping.set()
        await asyncio.wait_for(running, 10)


async def test_a_wedged_loop_fails_liveness_and_a_running_one_does_not(tmp_path: Path) -> None:
    async def body(worker: Worker, ai: _AI, clock: _Clock) -> None:
        pulse = worker.pulse
        await _eventually(lambda: pulse.ready().ok, "ready worker")
        # Time passes; a loop going round keeps beating, so it stays alive and ready.
        clock.now += 60
        await _eventually(lambda: pulse.last_beat is not None and pulse.last_beat.at == clock.now, "beat")
        assert pulse.live().ok and pulse.ready().ok
        # The fault: the loop blocks for good. The probe sees it once the stage's bound passes.
        (tmp_path / "wedge").touch()
        await _eventually(lambda: not (tmp_path / "wedge").exists(), "wedge file taken by the loop")
        wedged_at = clock.now
        clock.now += 5.0  # within the idle wait's bound (0.01 s) plus the 5 s grace
        assert pulse.live().ok
        clock.now = wedged_at + 6.0
        assert not pulse.live().ok and "wedged" in pulse.live().reason
        assert not pulse.ready().ok

    await _with_worker(tmp_path, body)


async def test_an_unreachable_ai_service_makes_the_worker_unready_but_alive(tmp_path: Path) -> None:
    async def body(worker: Worker, ai: _AI, clock: _Clock) -> None:
        pulse = worker.pulse
        await _eventually(lambda: pulse.ready().ok, "ready worker")
        ai.down = True
        await _eventually(lambda: not pulse.ready().ok, "unready worker")
        assert "did not answer" in pulse.ready().reason
        assert pulse.live().ok  # retrying with backoff is the loop going round: no restart
        ai.down = False
        await _eventually(lambda: pulse.ready().ok, "ready again")

    await _with_worker(tmp_path, body)
